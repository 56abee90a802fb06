"""Captured samples as bytes: what reads back, what is refused before numpy allocates it,
and how samples stack into one dataset."""

from __future__ import annotations

import io
import zipfile
from datetime import UTC, datetime

import numpy as np
import pytest

from protocol import SampleMeta
from tensors.samples import SampleFormatError, dataset_of, read_sample, write_sample

MAX_BYTES = 1024 * 1024


def _meta(**changes: object) -> SampleMeta:
    fields: dict[str, object] = {
        "device_id": "cam-1",
        "model": "digits",
        "release_version": 3,
        "captured_at": datetime(2026, 12, 4, 9, 0, tzinfo=UTC),
        "reason": "low_confidence",
        "confidence": 0.31,
        "inputs": ["x"],
        "outputs": ["probs"],
    }
    return SampleMeta.model_validate(fields | changes)


def _sample(rows: int = 1, width: int = 4) -> bytes:
    inputs = {"x": np.arange(rows * width, dtype=np.float32).reshape(rows, width)}
    outputs = {"probs": np.full((rows, 3), 1 / 3, dtype=np.float32)}
    return write_sample(_meta(), inputs, outputs)


def test_a_sample_reads_back_as_written() -> None:
    sample = read_sample(_sample(rows=2), max_bytes=MAX_BYTES)
    assert sample.meta == _meta()
    assert sample.inputs["x"].shape == (2, 4)
    assert sample.outputs["probs"].dtype == np.float32


def test_oversize_sample_is_refused() -> None:
    data = _sample()
    with pytest.raises(SampleFormatError, match="over"):
        read_sample(data, max_bytes=len(data) - 1)


@pytest.mark.parametrize(
    "data",
    [b"", b"not a zip at all", b"PK\x03\x04" + b"\x00" * 100],
    ids=["empty", "garbage", "truncated-zip"],
)
def test_malformed_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(SampleFormatError):
        read_sample(data, max_bytes=MAX_BYTES)


def test_compressed_member_is_refused_as_a_possible_zip_bomb() -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, meta=np.zeros(4, np.uint8))
    with pytest.raises(SampleFormatError, match="stored"):
        read_sample(buffer.getvalue(), max_bytes=MAX_BYTES)


def test_pickled_object_array_is_refused() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{"input:x": np.array([{"evil": 1}], dtype=object)})
    with pytest.raises(SampleFormatError):
        read_sample(buffer.getvalue(), max_bytes=MAX_BYTES)


def test_header_declaring_a_huge_shape_is_refused() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{"input:x": np.zeros(4, np.float32)})
    # Rewrite the member with a header that claims a huge shape (4 GB it does not hold).
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info).replace(b"(4,), }", b"(999999999,), }")
            dst.writestr(info.filename, data)
    with pytest.raises(SampleFormatError):
        read_sample(out.getvalue(), max_bytes=MAX_BYTES)


def test_metadata_naming_other_tensors_is_refused() -> None:
    buffer = io.BytesIO()
    meta = np.frombuffer(_meta(inputs=["y"]).model_dump_json().encode(), dtype=np.uint8)
    np.savez(buffer, meta=meta, **{"input:x": np.zeros((1, 4)), "output:probs": np.zeros((1, 3))})
    with pytest.raises(SampleFormatError, match="other tensors"):
        read_sample(buffer.getvalue(), max_bytes=MAX_BYTES)


def test_unexpected_member_is_refused() -> None:
    buffer = io.BytesIO()
    meta = np.frombuffer(_meta(inputs=[], outputs=[]).model_dump_json().encode(), np.uint8)
    np.savez(buffer, meta=meta, extra=np.zeros(2))
    with pytest.raises(SampleFormatError, match="unexpected"):
        read_sample(buffer.getvalue(), max_bytes=MAX_BYTES)


def test_dataset_stacks_rows_and_leaves_out_other_shapes() -> None:
    samples = [
        ("a" * 64, read_sample(_sample(rows=1), max_bytes=MAX_BYTES)),
        ("b" * 64, read_sample(_sample(rows=2), max_bytes=MAX_BYTES)),
        ("c" * 64, read_sample(_sample(rows=1, width=5), max_bytes=MAX_BYTES)),
    ]
    dataset = dataset_of(samples)
    assert (dataset.samples, dataset.rows, dataset.skipped) == (2, 3, 1)
    assert dataset.arrays["input:x"].shape == (3, 4)
    assert dataset.arrays["output:probs"].shape == (3, 3)
    assert list(dataset.arrays["sha256"]) == ["a" * 64, "b" * 64, "b" * 64]
    assert list(dataset.arrays["release_version"]) == [3, 3, 3]
    buffer = io.BytesIO()
    np.savez(buffer, **dataset.arrays)  # type: ignore[arg-type]
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as reloaded:
        assert reloaded["device_id"][0] == "cam-1"
        assert reloaded["reason"][2] == "low_confidence"
