"""The contract the controller relies on, through real ``python -m converters`` processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tensors import read_check_bundle

REPO_ROOT = Path(__file__).resolve().parents[2]
EXIT_OK = 0
EXIT_REFUSED = 3


def converters(*args: str | Path) -> tuple[int, Any, str]:
    """Run one command; return its exit code, its stdout parsed as one JSON object, stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "converters", *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 1, f"stdout must be one JSON line, got {result.stdout!r}"
    return result.returncode, json.loads(lines[0]), result.stderr


def test_inspect_prints_the_model_description(digits_model: Path) -> None:
    code, info, _ = converters("inspect", digits_model)
    assert code == EXIT_OK
    assert info["format"] == "onnx"
    assert info["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("truncated", "malformed_model"),
        ("external_parent", "external_data_escape"),
        ("fake", "malformed_model"),
        ("random_bytes", "unsupported_format"),
    ],
)
def test_inspect_refusal_exits_3_with_a_reason_and_a_kind(
    broken: dict[str, Path], name: str, kind: str
) -> None:
    code, refusal, stderr = converters("inspect", broken[name])
    assert code == EXIT_REFUSED
    assert refusal["kind"] == kind
    assert refusal["error"]
    assert "Traceback" not in stderr


def test_variant_accepted_prints_status_report_and_op_types(
    digits_model: Path, digits_validation: Path, tmp_path: Path
) -> None:
    output = tmp_path / "digits-int8.onnx"
    code, result, _ = converters(
        "variant", "--mode", "int8-dynamic", "--parent", digits_model,
        "--output", output, "--validation", digits_validation,
    )  # fmt: skip
    assert code == EXIT_OK
    assert set(result) == {"mode", "status", "reasons", "report", "notes", "fp32_op_types"}
    assert result["mode"] == "int8-dynamic"
    assert result["status"] == "accepted"
    assert result["report"]["size_bytes_candidate"] == output.stat().st_size


def test_variant_rejected_by_the_gate_still_exits_0(
    digits_model: Path, digits_validation: Path, tmp_path: Path
) -> None:
    output = tmp_path / "digits-fp16.onnx"
    code, result, _ = converters(
        "variant", "--mode", "fp16", "--parent", digits_model, "--output", output,
        "--validation", digits_validation, "--min-top1-agreement", "1.01",
    )  # fmt: skip
    assert code == EXIT_OK
    assert result["status"] == "rejected"
    assert "1.01" in result["reasons"][0]
    assert output.exists()


def test_static_quantization_without_validation_set_exits_3(
    digits_model: Path, tmp_path: Path
) -> None:
    code, refusal, _ = converters(
        "variant", "--mode", "int8-static", "--parent", digits_model,
        "--output", tmp_path / "x.onnx",
    )  # fmt: skip
    assert code == EXIT_REFUSED
    assert refusal["kind"] == "bad_validation_set"


def test_quantizer_chatter_never_reaches_stdout(tflite_model: Path, tmp_path: Path) -> None:
    # LiteRT Quantizer prints a summary to stdout; only the JSON object may appear there.
    code, result, stderr = converters(
        "variant", "--mode", "tflite-int8-dynamic", "--parent", tflite_model,
        "--output", tmp_path / "tiny-int8.tflite",
    )  # fmt: skip
    assert code == EXIT_OK
    assert result["status"] == "accepted"
    assert "Quantized model size" in stderr


def test_evaluate_and_profile_print_their_objects(
    digits_model: Path, digits_validation: Path, tmp_path: Path
) -> None:
    code, report, _ = converters(
        "evaluate", "--parent", digits_model, "--candidate", digits_model,
        "--validation", digits_validation,
    )  # fmt: skip
    assert code == EXIT_OK
    assert report["top1_agreement"] == 1.0
    bundle = tmp_path / "bundle.npz"
    code, profile, _ = converters(
        "profile", "--model", digits_model, "--validation", digits_validation,
        "--golden-count", "2", "--bundle-out", bundle,
    )  # fmt: skip
    assert code == EXIT_OK
    assert profile["golden_cases"] == 2
    assert profile["golden_source"] == "validation"
    assert profile["reference_profile"]["source"] == "validation"
    assert len(read_check_bundle(bundle.read_bytes()).golden) == 2


def test_usage_errors_are_neither_success_nor_refusal() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "converters", "variant", "--mode", "int4"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode not in (EXIT_OK, EXIT_REFUSED)
    assert result.stdout == ""
