"""Real CNN topologies through the converters: SqueezeNet from the onnx package.

Its weights are built at run time (``ConstantOfShape``), which quantizers cannot see:
every ONNX variant of it used to fail with ``conversion_failed``. Now each is produced
from a folded copy and gated on the same evaluation as any variant, latency included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from converters import make_variant
from converters.onnx_fold import builds_weights_at_run_time, fold_constants
from tests.model_factory import onnx_reference_models


@pytest.fixture(scope="module")
def squeezenet() -> Path:
    return next(path for path in onnx_reference_models() if path.stem == "light_squeezenet")


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("frames") / "frames.npz"
    data = np.random.default_rng(0).uniform(0.0, 1.0, (4, 3, 224, 224)).astype(np.float32)
    np.savez(path, data_0=data)
    return path


def test_folding_turns_run_time_weights_into_initializers(squeezenet: Path, tmp_path: Path) -> None:
    assert builds_weights_at_run_time(onnx.load(squeezenet))
    folded = tmp_path / "folded.onnx"

    removed = fold_constants(squeezenet, folded)

    model = onnx.load(folded)
    assert removed > 0
    assert not builds_weights_at_run_time(model)
    assert {value.name for value in model.graph.input} == {"data_0"}
    assert len(model.graph.initializer) > 0


@pytest.mark.parametrize("mode", ["int8-dynamic", "int8-static", "fp16"])
def test_every_onnx_variant_of_a_real_cnn_is_made_and_gated(
    squeezenet: Path, frames: Path, tmp_path: Path, mode: str
) -> None:
    output = tmp_path / f"squeezenet-{mode}.onnx"

    result = make_variant(mode, squeezenet, output, frames)  # type: ignore[arg-type]

    assert output.is_file()
    assert any("folded into initializers" in note for note in result.notes)
    assert result.report.latency_ms_parent > 1.0  # big enough for the latency gate
    assert result.report.latency_ratio > 0
    if result.status == "rejected":
        assert result.decision.reasons
