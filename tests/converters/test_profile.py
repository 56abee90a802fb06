"""``profile``: golden cases a re-run reproduces, and a reference profile that validates.

Each profile goes through the bundle file format first, as devices receive it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from converters import MAX_GOLDEN_BYTES, TOLERANCES, profile_model
from tensors import CheckBundle, GoldenCase, read_check_bundle, write_check_bundle
from tensors.profile import histogram
from tests.model_factory import onnx_reference_models


def bundle_of(model: Path, validation: Path | None = None, **options: int) -> CheckBundle:
    buffer = io.BytesIO()
    write_check_bundle(profile_model(model, validation, **options).bundle, buffer)
    return read_check_bundle(buffer.getvalue())


def rerun_onnx(model: Path, case: GoldenCase) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, dict(case.inputs)), strict=True))


def assert_reproduced(case: GoldenCase, actual: dict[str, np.ndarray]) -> None:
    for name, expected in case.expected_outputs.items():
        np.testing.assert_allclose(actual[name], expected, atol=case.atol, rtol=case.rtol)


def test_digits_golden_cases_are_reproduced_by_a_fresh_session(
    digits_model: Path, digits_validation: Path
) -> None:
    result = profile_model(digits_model, digits_validation, golden_count=4)
    assert result.golden_source == "validation"
    bundle = bundle_of(digits_model, digits_validation, golden_count=4)
    assert len(bundle.golden) == 4
    held_out = np.load(digits_validation)["input"]
    for case in bundle.golden:
        tensor = case.inputs["input"]
        assert tensor.shape == (1, 64)
        assert any(np.array_equal(tensor[0], row) for row in held_out)
        assert (case.atol, case.rtol) == TOLERANCES["fp32"]
        assert_reproduced(case, rerun_onnx(digits_model, case))


def test_digits_reference_profile_describes_a_classifier(
    digits_model: Path, digits_validation: Path
) -> None:
    reference = bundle_of(digits_model, digits_validation).reference_profile
    assert reference is not None
    assert reference.source == "validation"
    profile = reference.model_dump(mode="json")
    assert set(profile["inputs"]) == {"input"}
    assert set(profile["outputs"]) == {"label", "probabilities"}
    for hist in [*profile["inputs"].values(), *profile["outputs"].values()]:
        assert len(hist["bin_edges"]) == len(hist["fractions"]) + 1
        assert all(b > a for a, b in zip(hist["bin_edges"], hist["bin_edges"][1:], strict=False))
        assert sum(hist["fractions"]) == pytest.approx(1.0)
    assert 0.5 < profile["top1_confidence_mean"] <= 1.0
    assert len(profile["class_distribution"]) == 10
    assert sum(profile["class_distribution"]) == pytest.approx(1.0)


def test_without_validation_set_golden_inputs_are_generated_and_recorded(cnn_model: Path) -> None:
    result = profile_model(cnn_model, golden_count=2, seed=1)
    assert result.golden_source == "generated"
    assert len(result.bundle.golden) == 2
    for case in result.bundle.golden:
        (image,) = case.inputs.values()
        assert image.shape == (1, 1, 8, 8)
        assert_reproduced(case, rerun_onnx(cnn_model, case))
    profile = result.bundle.reference_profile
    assert profile is not None
    assert profile.source == "generated"  # never to drive a drift judgement
    # An image input is profiled too (one channel here: no per-channel histograms).
    assert list(profile.inputs) == [next(iter(result.bundle.golden[0].inputs))]
    assert profile.class_distribution is not None


def test_same_seed_gives_the_same_golden_data(cnn_model: Path) -> None:
    def first_input(seed: int) -> np.ndarray:
        return next(iter(profile_model(cnn_model, seed=seed).bundle.golden[0].inputs.values()))

    np.testing.assert_array_equal(first_input(4), first_input(4))
    assert not np.array_equal(first_input(4), first_input(5))


def test_int8_variant_gets_wider_tolerances(
    digits_model: Path, digits_validation: Path, tmp_path: Path
) -> None:
    from converters import make_variant

    variant = tmp_path / "digits-int8.onnx"
    make_variant("int8-dynamic", digits_model, variant, digits_validation)
    (case,) = profile_model(variant, digits_validation, golden_count=1).bundle.golden
    assert (case.atol, case.rtol) == TOLERANCES["int8"]


def test_tflite_golden_cases_are_reproduced_by_litert(tflite_model: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    bundle = bundle_of(tflite_model, golden_count=3)
    assert len(bundle.golden) == 3
    interpreter = Interpreter(model_path=str(tflite_model))
    interpreter.allocate_tensors()
    for case in bundle.golden:
        (x,) = case.inputs.values()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        assert_reproduced(case, {"probabilities": output})


def test_a_fixed_batch_reference_model_profiles_single_images() -> None:
    squeezenet = next(p for p in onnx_reference_models() if p.stem == "light_squeezenet")
    (case,) = bundle_of(squeezenet, golden_count=1).golden
    (image,) = case.inputs.values()
    assert image.shape == (1, 3, 224, 224)
    assert_reproduced(case, rerun_onnx(squeezenet, case))


def test_golden_cases_of_big_inputs_stay_within_their_byte_budget(cnn_model: Path) -> None:
    # 64 cases of a 1x1x8x8 input fit easily; the budget only bites for big inputs.
    assert len(profile_model(cnn_model, golden_count=64).bundle.golden) == 64
    squeezenet = next(p for p in onnx_reference_models() if p.stem == "light_squeezenet")
    golden = profile_model(squeezenet, golden_count=64).bundle.golden
    weight = sum(
        a.nbytes for c in golden for a in (*c.inputs.values(), *c.expected_outputs.values())
    )
    assert 1 <= len(golden) < 64
    assert weight <= MAX_GOLDEN_BYTES


@pytest.mark.parametrize(
    "values", [np.zeros(10), np.full(5, 7.0), np.array([1.0, 1.0 + 1e-12]), np.arange(100.0)]
)
def test_histogram_edges_always_increase(values: np.ndarray) -> None:
    hist = histogram(values)
    assert hist is not None
    assert all(b > a for a, b in zip(hist["bin_edges"], hist["bin_edges"][1:], strict=False))
    assert sum(hist["fractions"]) == pytest.approx(1.0)


def test_histogram_of_nothing_finite_is_none() -> None:
    assert histogram(np.array([np.nan, np.inf])) is None


def test_squeezenets_profile_has_each_colour_channel_and_a_device_sees_one_shift(
    tmp_path: Path,
) -> None:
    """A real image network (1x3x224x224): the converter profiles each colour channel of
    its validation frames, and a recorder fed frames whose red channel moved reads drift
    there, and less in the whole image, where the other two channels dilute it."""
    from agent.stats.recorder import StatsRecorder

    squeezenet = next(p for p in onnx_reference_models() if p.stem == "light_squeezenet")
    rng = np.random.default_rng(12)
    frames = rng.uniform(0.0, 1.0, (12, 3, 224, 224)).astype(np.float32)
    validation = tmp_path / "frames.npz"
    np.savez(validation, data_0=frames)

    profile = profile_model(squeezenet, validation, golden_count=1).bundle.reference_profile

    assert profile is not None
    assert profile.source == "validation"
    assert set(profile.inputs) == {"data_0", "data_0[0]", "data_0[1]", "data_0[2]"}
    recorder = StatsRecorder(reference=profile, now_s=0.0)
    for _ in range(4):
        live = rng.uniform(0.0, 1.0, (1, 3, 224, 224)).astype(np.float32)
        live[:, 0] = np.clip(live[:, 0] + 0.3, 0.0, 1.0)
        recorder.record(latency_s=0.002, inputs={"data_0": live}, outputs=None, error=False)
    psi = recorder.cumulative().drift_psi
    assert psi["data_0[0]"] > 0.25
    assert psi["data_0[1]"] < 0.1
    assert psi["data_0"] < psi["data_0[0]"]
