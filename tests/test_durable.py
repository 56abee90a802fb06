"""Atomic writes: the destination holds the old bytes or the new ones, never a mix."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from durable import (
    PRIVATE_FILE_MODE,
    PUBLIC_FILE_MODE,
    read_json,
    write_atomic,
    write_json_atomic,
)


def test_write_atomic_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_atomic(path, b"old")
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["state.json"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_write_keeps_the_old_bytes_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    path = tmp_path / "state.json"
    write_atomic(path, b"old")

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_json_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    write_json_atomic(path, {"b": [1, 2], "a": "é"})
    assert read_json(path) == {"a": "é", "b": [1, 2]}


def test_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b"[" + b"1," * 100 + b"1]")
    with pytest.raises(ValueError, match="larger than"):
        read_json(path, max_bytes=64)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "absent.json")


def test_the_new_file_gets_the_mode_asked_for(tmp_path: Path) -> None:
    private, public = tmp_path / "key.pem", tmp_path / "trust-root.json"
    write_atomic(private, b"secret")
    write_atomic(public, b"{}", mode=PUBLIC_FILE_MODE)

    assert stat.S_IMODE(private.stat().st_mode) == PRIVATE_FILE_MODE
    assert stat.S_IMODE(public.stat().st_mode) == PUBLIC_FILE_MODE


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_keep_owner_keeps_the_owner_of_the_replaced_file(tmp_path: Path) -> None:
    path = tmp_path / "passwords"
    path.write_bytes(b"old")
    os.chown(path, 4242, 4343)  # as if chown'ed to the broker's user

    write_atomic(path, b"new", keep_owner=True)

    assert (path.stat().st_uid, path.stat().st_gid) == (4242, 4343)
    assert path.read_bytes() == b"new"
