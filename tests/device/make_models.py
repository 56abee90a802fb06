"""Build the device matrix's models in the main venv: ``python -m tests.device.make_models DIR``.

The device venv has no LiteRT converter or flatbuffer schema (a device never builds
models), so the TFLite model, its release's check bundle and the outputs the device must
reproduce are made here, with ai_edge_litert, and handed over as files:

- ``model.tflite``: tests.model_factory's tiny classifier (64 floats in, 10 out);
- ``bundle.npz``: a check bundle with two golden cases computed by LiteRT;
- ``expected.npz``: one more input and LiteRT's output for it (``x``, ``y``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tensors import CheckBundle, GoldenCase, write_check_bundle
from tests.model_factory import tiny_tflite


def _run(model: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return np.array(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))


def main(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    built = tiny_tflite(directory)
    model = built.rename(directory / "model.tflite")
    rng = np.random.default_rng(5)
    cases = []
    for _ in range(2):
        x = rng.standard_normal((1, 64)).astype(np.float32)
        cases.append(
            GoldenCase(inputs={"input": x}, expected_outputs={"probabilities": _run(model, x)})
        )
    with (directory / "bundle.npz").open("wb") as handle:
        write_check_bundle(CheckBundle(tuple(cases)), handle)
    x = rng.standard_normal((1, 64)).astype(np.float32)
    np.savez(directory / "expected.npz", x=x, y=_run(model, x))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
