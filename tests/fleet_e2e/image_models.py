"""Image models for end-to-end rollouts: SqueezeNet from the onnx package, and a broken copy.

Validation frames are pixels scaled to [0, 1]; the application's live frames are
ImageNet-normalised (mean 0, negative values): not the validation data, as real cameras
never are. The broken copy is SqueezeNet with one bug a real pipeline can ship: it takes
a square root of its smallest input pixel, finite on every validation frame, NaN on every
live frame. Its golden check passes; live traffic shows the NaNs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tests.model_factory import onnx_reference_models

INPUT = "data_0"
OUTPUT = "softmaxout_1"
FRAME_SHAPE = (1, 3, 224, 224)


def squeezenet() -> Path:
    return next(path for path in onnx_reference_models() if path.stem == "light_squeezenet")


def validation_frames(path: Path, samples: int = 12) -> Path:
    frames = np.random.default_rng(11).uniform(0.0, 1.0, (samples, *FRAME_SHAPE[1:]))
    np.savez(path, **{INPUT: frames.astype(np.float32)})
    return path


def live_frame(seed: int) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).standard_normal(FRAME_SHAPE).astype(np.float32)


def live_request(frame: np.ndarray[Any, Any]) -> bytes:
    """An Open Inference Protocol JSON request for one frame, encoded once."""
    tensor = {"name": INPUT, "shape": list(frame.shape), "datatype": "FP32"}
    body = {"inputs": [tensor | {"data": frame.ravel().tolist()}]}
    return json.dumps(body).encode()


def nan_on_live_frames(path: Path) -> Path:
    """SqueezeNet whose output is NaN whenever a pixel is negative (see the module doc)."""
    model = onnx.load(squeezenet())
    for node in model.graph.node:
        node.output[:] = ["raw_" + OUTPUT if name == OUTPUT else name for name in node.output]
    model.graph.node.extend(
        [
            # A Constant node, not an initializer: this IR version lists those as inputs.
            helper.make_node(
                "Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0.0, np.float32))
            ),
            helper.make_node("ReduceMin", [INPUT], ["darkest"], keepdims=0),
            helper.make_node("Sqrt", ["darkest"], ["root"]),
            helper.make_node("Mul", ["root", "zero"], ["nothing_or_nan"]),
            helper.make_node("Add", ["raw_" + OUTPUT, "nothing_or_nan"], [OUTPUT]),
        ]
    )
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
