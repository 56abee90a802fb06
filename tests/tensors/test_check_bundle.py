"""The check bundle: golden cases and a reference profile in an ``.npz`` read without pickles."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np
import pytest

from protocol import Histogram, ReferenceProfile
from tensors import (
    CheckBundle,
    CheckBundleError,
    GoldenCase,
    read_check_bundle,
    read_reference_profile,
    write_check_bundle,
)

PROFILE = ReferenceProfile(
    source="validation",
    outputs={"y": Histogram(bin_edges=[0.0, 0.5, 1.0], fractions=[0.25, 0.75])},
    top1_confidence_mean=0.9,
)
ONE = np.ones(1)


def encoded(bundle: CheckBundle) -> bytes:
    buffer = io.BytesIO()
    write_check_bundle(bundle, buffer)
    return buffer.getvalue()


def npz_of(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def manifest(**changes: Any) -> np.ndarray[Any, Any]:
    obj = {
        "format": "edgefleet-check-bundle",
        "version": 1,
        "cases": [{"inputs": ["x"], "outputs": ["y"], "atol": 1e-4, "rtol": 1e-3}],
        "reference_profile": None,
    } | changes
    return np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)


def test_golden_cases_and_profile_survive_a_round_trip() -> None:
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2)
    label = np.array([7], dtype=np.int64)
    case = GoldenCase(
        inputs={"image": x}, expected_outputs={"label": label, "p": x[0, 0]}, atol=0.1, rtol=0.2
    )

    bundle = read_check_bundle(encoded(CheckBundle((case, case), PROFILE)))

    assert len(bundle.golden) == 2
    [got, _] = bundle.golden
    assert list(got.inputs) == ["image"]
    assert list(got.expected_outputs) == ["label", "p"]
    np.testing.assert_array_equal(got.inputs["image"], x)
    assert got.expected_outputs["label"].dtype == np.int64
    assert (got.atol, got.rtol) == (0.1, 0.2)
    assert bundle.reference_profile == PROFILE


def test_reference_profile_reads_without_the_golden_tensors() -> None:
    case = GoldenCase(
        inputs={"x": np.zeros((1, 4), np.float32)}, expected_outputs={"y": np.ones(2)}
    )
    assert read_reference_profile(encoded(CheckBundle((case,), PROFILE))) == PROFILE
    assert read_reference_profile(encoded(CheckBundle())) is None


def test_big_endian_arrays_come_back_in_native_order() -> None:
    x = np.arange(4, dtype=">f4").reshape(1, 4)
    data = npz_of(manifest=manifest(), **{"case0.input0": x, "case0.output0": x})
    got = read_check_bundle(data).golden[0].inputs["x"]
    assert got.dtype == np.dtype("float32")
    assert got.dtype.isnative
    np.testing.assert_array_equal(got, x)


def test_pickled_object_array_is_refused_not_unpickled() -> None:
    pickled = np.array([{"a": 1}], dtype=object)
    data = npz_of(manifest=manifest(), **{"case0.input0": pickled, "case0.output0": pickled})
    with pytest.raises(CheckBundleError, match=r"does not read.*allow_pickle"):
        read_check_bundle(data)


def test_arrays_that_differ_from_the_manifest_are_refused() -> None:
    x = np.zeros((1, 4), np.float32)
    data = npz_of(manifest=manifest(), **{"case0.input0": x, "case0.extra": x})
    with pytest.raises(CheckBundleError, match=r"missing \['case0.output0'\], unexpected"):
        read_check_bundle(data)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({}, "no manifest"),
        ({"manifest": np.zeros(3, np.float32)}, "not a byte string"),
        ({"manifest": np.frombuffer(b"{not json", np.uint8)}, "not JSON"),
        ({"manifest": manifest(format="something-else")}, "format"),
        ({"manifest": manifest(version=2)}, "version 2 is not supported"),
        ({"manifest": manifest(cases=[{"inputs": [], "outputs": ["y"]}])}, "cases must"),
        ({"manifest": manifest(cases=[{"inputs": ["x"], "outputs": ["y"], "atol": -1}])}, "cases"),
        ({"manifest": manifest(cases=[], reference_profile={"inputs": 3})}, "reference profile"),
    ],
)
def test_malformed_manifest_is_refused_with_its_reason(
    arrays: dict[str, Any], message: str
) -> None:
    with pytest.raises(CheckBundleError, match=message):
        read_check_bundle(npz_of(**arrays))


@pytest.mark.parametrize(
    "data",
    [b"", b"not a zip", b"PK\x03\x04" + bytes(64), np.lib.format.MAGIC_PREFIX + bytes(32)],
)
def test_bytes_that_are_no_npz_are_refused(data: bytes) -> None:
    with pytest.raises(CheckBundleError):
        read_check_bundle(data)


def test_truncated_bundle_is_refused() -> None:
    case = GoldenCase(
        inputs={"x": np.ones((1, 64), np.float32)}, expected_outputs={"y": np.ones(3)}
    )
    data = encoded(CheckBundle((case,), PROFILE))
    with pytest.raises(CheckBundleError):
        read_check_bundle(data[: len(data) // 2])


def test_array_without_an_oip_datatype_is_not_written() -> None:
    case = GoldenCase(inputs={"x": np.array(["text"])}, expected_outputs={"y": np.ones(1)})
    with pytest.raises(CheckBundleError, match="no OIP datatype"):
        encoded(CheckBundle((case,)))


def test_bundle_is_a_plain_uncompressed_npz() -> None:
    case = GoldenCase(inputs={"x": np.ones((1, 4), np.float32)}, expected_outputs={"y": np.ones(1)})
    with zipfile.ZipFile(io.BytesIO(encoded(CheckBundle((case,))))) as archive:
        infos = archive.infolist()
    assert {info.filename for info in infos} == {
        "manifest.npy",
        "case0.input0.npy",
        "case0.output0.npy",
    }
    assert all(info.compress_type == zipfile.ZIP_STORED for info in infos)
