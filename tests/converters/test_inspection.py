"""``inspect``: good models are described, every broken one is refused with its kind."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from converters import (
    ConversionError,
    ExternalDataEscapeError,
    MalformedModelError,
    MissingDependencyError,
    TensorTooLargeError,
    UnsupportedDatatypeError,
    UnsupportedFormatError,
    detect_format,
    inspect_model,
)
from tests.model_factory import IR_VERSION, OPSET, identity_model, onnx_reference_models

# Every entry of tests.model_factory.broken_models and the refusal it must meet.
BROKEN_KINDS = {
    "truncated": "malformed_model",
    "bitflip_length": "malformed_model",
    "bitflip_op_type": "malformed_model",
    "huge_initializer": "tensor_too_large",
    "huge_input": "tensor_too_large",
    "huge_inferred": "tensor_too_large",
    "future_opset": "future_opset",
    "external_parent": "external_data_escape",
    "external_absolute": "external_data_escape",
    "external_symlink": "external_data_escape",
    "random_bytes": "unsupported_format",
    "empty": "unsupported_format",
    "fake": "malformed_model",
}


def test_digits_mlp_signature_size_hash_and_producer(digits_model: Path) -> None:
    info = inspect_model(digits_model).to_json_obj()
    assert info["format"] == "onnx"
    assert info["opset"] == 17
    assert info["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert info["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
    ]
    assert info["size_bytes"] == digits_model.stat().st_size
    assert info["sha256"] == hashlib.sha256(digits_model.read_bytes()).hexdigest()
    assert info["producer"].startswith("skl2onnx")


def test_small_cnn_has_a_symbolic_batch_dimension(cnn_model: Path) -> None:
    info = inspect_model(cnn_model)
    assert [spec.shape for spec in info.inputs] == [(-1, 1, 8, 8)]
    assert [spec.shape for spec in info.outputs] == [(-1, 10)]


def test_tflite_is_recognised_by_content_not_extension(tflite_model: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(tflite_model.read_bytes())
    info = inspect_model(renamed).to_json_obj()
    assert info["format"] == "tflite"
    assert info["opset"] is None
    assert info["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert info["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert info["producer"] == "edgefleet tiny classifier"


@pytest.mark.parametrize("model", onnx_reference_models(), ids=lambda path: path.stem)
def test_onnx_light_reference_models_load(model: Path) -> None:
    info = inspect_model(model)
    assert info.format == "onnx"
    assert info.opset == 9
    assert [spec.shape for spec in info.inputs] == [(1, 3, 224, 224)]


def test_the_corpus_covers_every_expected_refusal(broken: dict[str, Path]) -> None:
    assert set(broken) == set(BROKEN_KINDS)


@pytest.mark.parametrize(("name", "kind"), sorted(BROKEN_KINDS.items()))
def test_broken_model_is_refused_with_its_kind(
    broken: dict[str, Path], name: str, kind: str
) -> None:
    with pytest.raises(ConversionError) as refused:
        inspect_model(broken[name])
    assert refused.value.kind == kind
    assert str(refused.value)


def test_external_data_inside_the_model_directory_loads(tmp_path: Path) -> None:
    weights = np.arange(4, dtype=np.float32).reshape(1, 4)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [onnx.numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True,
              location="m.weights", size_threshold=0)  # fmt: skip
    assert (tmp_path / "m.weights").exists()
    assert inspect_model(tmp_path / "m.onnx").inputs[0].name == "x"


def test_external_data_that_does_not_exist_is_malformed(
    tmp_path: Path, broken: dict[str, Path]
) -> None:
    model = onnx.load(broken["external_parent"], load_external_data=False)
    model.graph.initializer[0].external_data[0].value = "missing.bin"
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(MalformedModelError, match="does not exist"):
        inspect_model(tmp_path / "m.onnx")


def test_escape_is_refused_before_the_checker_reads_anything(broken: dict[str, Path]) -> None:
    # /etc/passwd exists; refusing with the escape kind proves nothing tried to read it.
    with pytest.raises(ExternalDataEscapeError, match="/etc/passwd"):
        inspect_model(broken["external_absolute"])


def test_tensor_limit_is_configurable(digits_model: Path) -> None:
    with pytest.raises(TensorTooLargeError, match="above the limit of 1000"):
        inspect_model(digits_model, max_tensor_bytes=1000)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_tflite_is_malformed(tflite_model: Path, tmp_path: Path, fraction: float) -> None:
    data = tflite_model.read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(MalformedModelError):
        inspect_model(cut)


def test_unreadable_path_is_malformed(tmp_path: Path) -> None:
    with pytest.raises(MalformedModelError, match="cannot read"):
        inspect_model(tmp_path / "absent.onnx")


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x08\x08\x12\x07skl2onnx", "onnx"),
        (b"\x1c\x00\x00\x00TFL3\x00\x00", "tflite"),
        (b"\x00\x00\x00\x00TFL3", "tflite"),
    ],
)
def test_format_comes_from_the_first_bytes(head: bytes, expected: str) -> None:
    assert detect_format(head) == expected


@pytest.mark.parametrize("head", [b"", b"PK\x03\x04", b"\x89PNG\r\n", b"TFL3\x00\x00\x00\x00"])
def test_other_files_are_unsupported(head: bytes) -> None:
    with pytest.raises(UnsupportedFormatError):
        detect_format(head)


def test_a_string_tensor_is_an_unsupported_datatype(tmp_path: Path) -> None:
    path = identity_model(tmp_path / "strings.onnx", TensorProto.STRING)
    with pytest.raises(UnsupportedDatatypeError, match=r"'x' is of type tensor\(string\)") as info:
        inspect_model(path)
    assert info.value.kind == "unsupported_datatype"


def test_a_tflite_model_without_litert_is_a_missing_dependency(
    tflite_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgefleet\[tflite\]'"):
        inspect_model(tflite_model)
