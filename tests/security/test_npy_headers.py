""".npz files whose .npy headers lie or are huge are refused, never a 500 or an allocation.

Found in the security review: a validation set whose ``.npy`` header is 60,000 characters
gave a 500 (a ``MemoryError`` parsing it), and an ``.npz`` whose header claims shape
(1e9, 64) was accepted: numpy allocates the declared 256 GB before it reads the data.
The converters (validation sets) and devices (check bundles) now check every header
(``tensors.npz_headers``) before numpy reads an array.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from controller.tokens import Role
from converters.errors import BadValidationSetError
from converters.validation import load_validation_set
from simulator.demo_models import build_digits_model
from tensors import TensorSpec, read_check_bundle
from tensors.errors import CheckBundleError
from tests.security.http_server import ServedController, controller_settings, served

A_BILLION_ROWS = 10**9
DIGITS_INPUTS = [TensorSpec("input", "FP32", (-1, 64))]
DIGITS_OUTPUTS = [
    TensorSpec("label", "INT64", (-1,)),
    TensorSpec("probabilities", "FP32", (-1, 10)),
]
# The controller parses a header with ast.literal_eval: nested unary minus signs made it
# run out of parser stack (MemoryError); numpy refuses headers over 10,000 characters.
_OPENING, _CLOSING = "{'descr': '<f4', 'fortran_order': False, 'shape': (", "1, 64), }"
SIXTY_THOUSAND_CHARACTER_HEADER = (
    _OPENING + "-" * (60_000 - len(_OPENING) - len(_CLOSING)) + _CLOSING
)


def npy_v1(header: str, data: bytes) -> bytes:
    """An .npy (format 1.0) with ``header`` as its header, as written, and ``data``."""
    encoded = header.encode("latin-1")
    return b"\x93NUMPY\x01\x00" + len(encoded).to_bytes(2, "little") + encoded + data


def npz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, content in members.items():
            archive.writestr(f"{name}.npy", content)
    return buffer.getvalue()


def header_for(shape: tuple[int, ...], descr: str = "<f4") -> str:
    return f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".ljust(118) + "\n"


def billion_row_npz(name: str) -> bytes:
    """Claims float32 (1e9, 64) and holds one row."""
    return npz({name: npy_v1(header_for((A_BILLION_ROWS, 64)), bytes(64 * 4))})


def sixty_thousand_character_header_npz(name: str) -> bytes:
    return npz({name: npy_v1(SIXTY_THOUSAND_CHARACTER_HEADER, bytes(64 * 4))})


def _load_as_validation_set(path: Path) -> None:
    load_validation_set(path, DIGITS_INPUTS, DIGITS_OUTPUTS)


def _load_as_check_bundle(path: Path) -> None:
    read_check_bundle(path.read_bytes())


READERS: dict[str, tuple[Callable[[Path], None], type[Exception], str]] = {
    "validation set": (_load_as_validation_set, BadValidationSetError, "input"),
    "check bundle": (_load_as_check_bundle, CheckBundleError, "manifest"),
}


@pytest.fixture(params=sorted(READERS))
def reader(request: pytest.FixtureRequest) -> tuple[Callable[[Path], None], type[Exception], str]:
    return READERS[request.param]


def test_60000_character_npy_header_is_refused(
    tmp_path: Path, reader: tuple[Callable[[Path], None], type[Exception], str]
) -> None:
    load, error, member = reader
    path = tmp_path / "set.npz"
    path.write_bytes(sixty_thousand_character_header_npz(member))
    with pytest.raises(error, match="header of 60000 bytes"):
        load(path)


def test_npz_claiming_a_billion_rows_is_refused(
    tmp_path: Path, reader: tuple[Callable[[Path], None], type[Exception], str]
) -> None:
    load, error, member = reader
    path = tmp_path / "set.npz"
    path.write_bytes(billion_row_npz(member))
    with pytest.raises(error, match="declares float32"):
        load(path)


def test_npy_header_of_nested_minus_signs_is_refused(
    tmp_path: Path, reader: tuple[Callable[[Path], None], type[Exception], str]
) -> None:
    # 3,000 characters, under numpy's own limit: its ast.literal_eval hit RecursionError.
    load, error, member = reader
    header = _OPENING + "-" * 3000 + _CLOSING
    path = tmp_path / "set.npz"
    path.write_bytes(npz({member: npy_v1(header, bytes(64 * 4))}))
    with pytest.raises(error, match="unreadable header"):
        load(path)


@pytest.mark.parametrize(
    ("header", "data", "refusal"),
    [
        (header_for((2, 64)), bytes(64 * 4), "declares float32 \\[2, 64\\]"),
        (header_for((2**62, 2**62)), b"", "declares"),
        (header_for((-1, 64)), b"", "negative dimension"),
        (header_for((1,), descr="|O"), bytes(8), "allow_pickle"),
    ],
)
def test_npy_headers_that_lie_are_refused_before_numpy_reads_them(
    tmp_path: Path, header: str, data: bytes, refusal: str
) -> None:
    path = tmp_path / "set.npz"
    path.write_bytes(npz({"input": npy_v1(header, data)}))
    with pytest.raises(BadValidationSetError, match=refusal):
        load_validation_set(path, DIGITS_INPUTS, DIGITS_OUTPUTS)


def test_an_honest_validation_set_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "set.npz"
    np.savez(path, input=np.ones((3, 64), np.float32), labels=np.arange(3))
    loaded = load_validation_set(path, DIGITS_INPUTS, DIGITS_OUTPUTS)
    assert loaded.samples == 3


# End to end: the controller's upload route. It reads headers with code of its own, which
# this change does not own; these stay expected failures until that code uses the check.


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, _ = build_digits_model(tmp_path_factory.mktemp("digits"))
    return model


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ServedController]:
    with served(controller_settings(tmp_path)) as running:
        yield running


def _push_with_validation(
    controller: ServedController, model: Path, validation: bytes
) -> httpx.Response:
    token = controller.token(Role.OPERATOR)
    with httpx.Client(base_url=f"http://127.0.0.1:{controller.port}", timeout=60) as client:
        return client.post(
            "/api/v1/models/digits/versions",
            headers={"Authorization": f"Bearer {token}"},
            files={
                "model": (model.name, model.read_bytes()),
                "validation": ("validation.npz", validation),
            },
        )


def test_upload_with_a_60000_character_npy_header_gets_a_4xx(
    controller: ServedController, digits_model: Path
) -> None:
    response = _push_with_validation(
        controller, digits_model, sixty_thousand_character_header_npz("input")
    )
    assert 400 <= response.status_code < 500, response.text


def test_upload_of_an_npz_claiming_a_billion_rows_gets_a_4xx(
    controller: ServedController, digits_model: Path
) -> None:
    response = _push_with_validation(controller, digits_model, billion_row_npz("input"))
    assert 400 <= response.status_code < 500, response.text
