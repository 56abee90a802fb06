"""Quantize the test models with every applicable mode and print a markdown table.

Run from the repository root: ``.venv/bin/python bench/quantization.py``. Models are built
at run time into a temporary directory (the digits MLP, the small CNN, three of onnx's
light reference CNNs at 1x3x224x224 — SqueezeNet, ResNet-50, Inception v2 — and the tiny
TFLite classifier); nothing is downloaded. The reference CNNs' weights are constant fills
(the "light" models ship no trained weights), so their accuracy cannot be measured and
FP16 may overflow where real weights would not; latency and size are what they show.
Parent and variant latencies are measured in the same run, interleaved, by
``converters.evaluate``: compare the ratios, not the absolute numbers, which depend on
the machine.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from converters import ConversionError, make_variant
from converters.variants import Mode
from simulator.demo_models import build_digits_model
from tests.model_factory import onnx_reference_models, small_cnn, tiny_tflite

ONNX_MODES: tuple[Mode, ...] = ("int8-dynamic", "int8-static", "fp16")
# (stem, name in the table, samples of 1x3x224x224 frames)
REFERENCE_MODELS = (
    ("light_squeezenet", "SqueezeNet 1.0 (onnx light)", 16),
    ("light_resnet50", "ResNet-50 (onnx light)", 6),
    ("light_inception_v2", "Inception v2 (onnx light)", 8),
)
RANDOM_SAMPLES = 64


@dataclass(frozen=True)
class BenchModel:
    name: str
    path: Path
    validation: Path | None
    modes: tuple[Mode, ...]


def _random_images(path: Path, shape: tuple[int, ...], samples: int) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, **{"input": rng.random((samples, *shape), dtype=np.float32)})
    return path


def _models(directory: Path) -> list[BenchModel]:
    digits, digits_validation = build_digits_model(directory)
    cnn = small_cnn(directory)
    references = []
    for stem, name, samples in REFERENCE_MODELS:
        path = next(p for p in onnx_reference_models() if p.stem == stem)
        frames = directory / f"{stem}-frames.npz"
        # Old graphs list weights as inputs too: ask the runtime for the data input.
        input_name = ort.InferenceSession(str(path)).get_inputs()[0].name
        rng = np.random.default_rng(0)
        np.savez(frames, **{input_name: rng.random((samples, 3, 224, 224), dtype=np.float32)})
        references.append(BenchModel(name, path, frames, ONNX_MODES))
    return [
        BenchModel("digits MLP (sklearn)", digits, digits_validation, ONNX_MODES),
        BenchModel(
            "small CNN",
            cnn,
            _random_images(directory / "cnn-images.npz", (1, 8, 8), RANDOM_SAMPLES),
            ONNX_MODES,
        ),
        *references,
        BenchModel("tiny TFLite MLP", tiny_tflite(directory), None, ("tflite-int8-dynamic",)),
    ]


def _row(model: BenchModel, mode: Mode, directory: Path) -> str:
    suffix = ".tflite" if mode.startswith("tflite") else ".onnx"
    output = directory / f"{model.path.stem}-{mode}{suffix}"
    try:
        # LiteRT Quantizer prints a summary to stdout; keep stdout for the table.
        with contextlib.redirect_stdout(sys.stderr):
            result = make_variant(mode, model.path, output, model.validation)
    except ConversionError as exc:
        return f"| {model.name} | {mode} | | | | | | refused ({exc.kind}): {exc} |"
    r = result.report
    if r.accuracy_parent is not None and r.accuracy_candidate is not None:
        quality = f"acc {r.accuracy_parent:.4f} → {r.accuracy_candidate:.4f}"
    else:
        quality = "acc n/a"
    if r.top1_agreement is not None:
        quality += f", top-1 agree {r.top1_agreement:.4f}"
    status = result.status
    if result.decision.reasons:
        status += ": " + "; ".join(result.decision.reasons)
    return (
        f"| {model.name} | {mode} | {r.size_bytes_candidate / 1024:.1f} | {r.size_ratio:.2f} "
        f"| {r.latency_ms_parent:.3f} → {r.latency_ms_candidate:.3f} | {r.latency_ratio:.2f} "
        f"| {quality} | {status} |"
    )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as scratch:
        directory = Path(scratch)
        print(
            "| model | variant | size KB | size ratio | latency ms parent → variant "
            "| latency ratio | accuracy / agreement | status |"
        )
        print("| --- | --- | ---: | ---: | ---: | ---: | --- | --- |")
        for model in _models(directory):
            for mode in model.modes:
                print(_row(model, mode, directory), flush=True)


if __name__ == "__main__":
    main()
