"""File names that reach the file system: one plain component, or refused."""

from __future__ import annotations

import pytest

from agent.errors import StoreError, UnsafeFileNameError
from agent.update.names import verify_safe_file_name, verify_sha256_hex

SAFE = ["model.onnx", "digits-v3.tflite", "a", "Model_1.0.onnx"]
UNSAFE = [
    "", ".", "..", "../model.onnx", "a/../b", "a/b", "/etc/passwd", "C:\\x", "a\\b",
    "x\x00.onnx", "x\n.onnx", "model..onnx", "-rf", "~root", " model.onnx", "m" * 129,
]  # fmt: skip


@pytest.mark.parametrize("name", SAFE)
def test_plain_file_names_are_accepted(name: str) -> None:
    assert verify_safe_file_name(name) == name


@pytest.mark.parametrize("name", UNSAFE, ids=repr)
def test_file_names_that_could_escape_are_refused(name: str) -> None:
    with pytest.raises(UnsafeFileNameError):
        verify_safe_file_name(name)


@pytest.mark.parametrize("digest", ["AB" * 32, "ab" * 31, "../" + "a" * 61, "g" * 64])
def test_malformed_digests_are_refused(digest: str) -> None:
    with pytest.raises(StoreError):
        verify_sha256_hex(digest)
