"""The datatype table: protocol's OIP names, numpy, ONNX Runtime and LiteRT agree, both ways."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from onnx import TensorProto, helper

import protocol
from protocol.release import Datatype
from tensors import (
    OIP_DATATYPES,
    OnnxBackend,
    TensorSpec,
    UnsupportedDatatypeError,
    datatype_of_numpy,
    datatype_of_ort,
    numpy_dtype_of,
    ort_type_of,
    reported_datatype,
)
from tests.model_factory import identity_model

ONNX_ELEMENT_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
}


def test_the_table_has_exactly_protocols_datatypes() -> None:
    assert set(protocol.DATATYPE_BYTES) == OIP_DATATYPES
    assert set(get_args(Datatype)) == OIP_DATATYPES
    assert set(ONNX_ELEMENT_TYPES) == OIP_DATATYPES


@pytest.mark.parametrize("datatype", sorted(OIP_DATATYPES))
def test_numpy_itemsize_is_the_size_protocol_signs(datatype: str) -> None:
    assert numpy_dtype_of(datatype).itemsize == protocol.DATATYPE_BYTES[datatype]


@pytest.mark.parametrize("datatype", sorted(OIP_DATATYPES))
def test_every_datatype_maps_to_numpy_and_back(datatype: str) -> None:
    dtype = numpy_dtype_of(datatype)
    assert datatype_of_numpy(dtype) == datatype
    # LiteRT reports dtypes as numpy scalar types; byte order does not matter.
    assert datatype_of_numpy(dtype.type) == datatype
    assert datatype_of_numpy(dtype.newbyteorder(">")) == datatype
    assert reported_datatype(dtype) == datatype


@pytest.mark.parametrize("datatype", sorted(OIP_DATATYPES))
def test_every_datatype_maps_to_onnx_and_back(datatype: str) -> None:
    assert datatype_of_ort(ort_type_of(datatype)) == datatype
    # The ONNX element type's numpy dtype is the table's numpy dtype.
    numpy_of_onnx = helper.tensor_dtype_to_np_dtype(ONNX_ELEMENT_TYPES[datatype])
    assert datatype_of_numpy(numpy_of_onnx) == datatype


@pytest.mark.parametrize("datatype", sorted(OIP_DATATYPES))
def test_onnxruntime_reports_each_datatype_as_the_table_says(datatype: str, tmp_path: Path) -> None:
    path = identity_model(tmp_path / "identity.onnx", ONNX_ELEMENT_TYPES[datatype])
    backend = OnnxBackend(path)
    assert backend.inputs == (TensorSpec("x", datatype, (-1, 3)),)
    x = np.ones((2, 3), dtype=numpy_dtype_of(datatype))
    y = backend.run({"x": x})["y"]
    assert y.dtype == numpy_dtype_of(datatype)
    assert np.array_equal(y, x)


def test_a_type_with_no_oip_name_is_reported_by_the_runtimes_own_name(tmp_path: Path) -> None:
    backend = OnnxBackend(identity_model(tmp_path / "strings.onnx", TensorProto.STRING))
    (spec,) = backend.inputs
    assert spec.datatype == "tensor(string)"
    assert not spec.is_oip
    assert reported_datatype(np.complex64) == "complex64"


@pytest.mark.parametrize(
    "runtime_type", ["tensor(string)", "tensor(bfloat16)", "seq(tensor(float))"]
)
def test_onnx_types_with_no_oip_name_have_none(runtime_type: str) -> None:
    assert datatype_of_ort(runtime_type) is None


@pytest.mark.parametrize("dtype", [np.complex64, np.str_, np.object_, np.dtype("datetime64[s]")])
def test_numpy_types_with_no_oip_name_have_none(dtype: object) -> None:
    assert datatype_of_numpy(dtype) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("lookup", [numpy_dtype_of, ort_type_of])
def test_a_name_that_is_no_oip_datatype_is_unsupported(lookup: object) -> None:
    with pytest.raises(UnsupportedDatatypeError, match="BF16 is no OIP datatype") as refused:
        lookup("BF16")  # type: ignore[operator]
    assert refused.value.datatype == "BF16"


def test_a_spec_of_a_runtime_type_has_no_numpy_dtype() -> None:
    spec = TensorSpec("x", "tensor(string)", (-1,))
    with pytest.raises(UnsupportedDatatypeError):
        _ = spec.dtype


def test_a_spec_refuses_a_dimension_below_minus_one() -> None:
    with pytest.raises(ValueError, match="negative dimension"):
        TensorSpec("x", "FP32", (-2, 3))
