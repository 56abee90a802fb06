"""The model store: content addressing, the current/previous switch, and crashes.

The crash tests kill the store at every syscall of an operation (the k-th call to one of
``CRASHABLE`` raises and every later one too, as in a dead process), then "reboot" with
a fresh ``ModelStore`` and check what is on disk. They cannot drop writes that were not
fsync'd; the fsync calls themselves are among the crash points.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.errors import HashMismatchError, StoreError, UnsafeFileNameError
from agent.update.store import ModelStore

MODEL = "digits"
CRASHABLE = ("replace", "rename", "symlink", "fsync", "unlink", "rmdir", "mkdir", "chmod")


class Crash(BaseException):
    """The process died: not an ``Exception``, so no cleanup handler swallows it."""


@contextmanager
def crash_at(monkeypatch: pytest.MonkeyPatch, k: int | None) -> Iterator[list[int]]:
    """Count syscalls in ``CRASHABLE``; from the ``k``-th on (0-based), each one raises."""
    calls = [0]

    def wrap(real: Callable[..., Any]) -> Callable[..., Any]:
        def syscall(*args: Any, **kwargs: Any) -> Any:
            if k is not None and calls[0] >= k:
                raise Crash
            calls[0] += 1
            return real(*args, **kwargs)

        return syscall

    with monkeypatch.context() as patch:
        for name in CRASHABLE:
            patch.setattr(os, name, wrap(getattr(os, name)))
        yield calls


def write_artifact(
    directory: Path, content: bytes, name: str = "download.part"
) -> tuple[str, Path]:
    path = directory / name
    path.write_bytes(content)
    return hashlib.sha256(content).hexdigest(), path


def staged(store: ModelStore, content: bytes, filename: str = "model.onnx") -> str:
    sha, path = write_artifact(store.root.parent, content)
    store.stage(sha, filename, path)
    return sha


def assert_every_model_dir_is_complete(store: ModelStore) -> None:
    for directory in store.models_dir.iterdir():
        files = list(directory.iterdir())
        assert len(files) == 1, directory
        digest = hashlib.sha256(files[0].read_bytes()).hexdigest()
        assert directory.name == f"sha256-{digest}"


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store", MODEL)


def test_staged_model_is_content_addressed_and_read_only(store: ModelStore) -> None:
    sha, source = write_artifact(store.root.parent, b"model v1")
    path = store.stage(sha, "model.onnx", source)
    assert path == store.models_dir / f"sha256-{sha}" / "model.onnx"
    assert path.read_bytes() == b"model v1"
    assert not path.stat().st_mode & 0o222
    assert not source.exists()
    assert list(store.staging_dir.iterdir()) == []


def test_staging_the_same_model_twice_is_idempotent(store: ModelStore) -> None:
    sha = staged(store, b"model v1")
    again, source = write_artifact(store.root.parent, b"model v1", "again.part")
    assert store.stage(again, "model.onnx", source) == store.model_dir(sha) / "model.onnx"
    assert not source.exists()
    assert_every_model_dir_is_complete(store)


def test_same_bytes_released_again_under_another_file_name_keep_the_stored_file(
    store: ModelStore,
) -> None:
    # Version 2 of a model can be the very bytes of version 1 (re-pushed, re-released):
    # content addresses the model, so the stored file serves for both.
    staged(store, b"model v1")
    sha, source = write_artifact(store.root.parent, b"model v1")

    again = store.stage(sha, "other.onnx", source)

    assert again == store.artifact_path(sha) == store.model_dir(sha) / "model.onnx"
    assert [p.name for p in store.model_dir(sha).iterdir()] == ["model.onnx"]
    assert not source.exists()


def test_rollback_of_the_same_bytes_deployed_again_keeps_them_serving(
    store: ModelStore,
) -> None:
    # The device's first model, then a new release of the very same bytes that fails its
    # probation: the model that served before must still serve.
    sha = staged(store, b"model v1")
    store.activate(sha)
    store.activate(sha)

    assert store.rollback(from_sha256=sha) == sha
    assert store.current_sha256() == sha


@pytest.mark.parametrize(
    "filename", ["../evil.onnx", "a/b.onnx", "/etc/passwd", "x\x00.onnx", ".."]
)
def test_stage_refuses_unsafe_file_names(store: ModelStore, filename: str) -> None:
    sha, source = write_artifact(store.root.parent, b"model v1")
    with pytest.raises(UnsafeFileNameError):
        store.stage(sha, filename, source)
    assert list(store.models_dir.iterdir()) == []
    assert source.exists()


def test_stage_refuses_bytes_that_do_not_match_their_hash(store: ModelStore) -> None:
    _, source = write_artifact(store.root.parent, b"tampered")
    claimed = hashlib.sha256(b"model v1").hexdigest()
    with pytest.raises(HashMismatchError):
        store.stage(claimed, "model.onnx", source)
    assert list(store.models_dir.iterdir()) == []
    assert list(store.staging_dir.iterdir()) == []


def test_stage_refuses_a_malformed_digest(store: ModelStore) -> None:
    _, source = write_artifact(store.root.parent, b"model v1")
    with pytest.raises(StoreError):
        store.stage("../../etc", "model.onnx", source)


def test_activate_keeps_the_previous_model(store: ModelStore) -> None:
    first, second = staged(store, b"v1"), staged(store, b"v2")
    store.activate(first)
    assert (store.current(), store.previous()) == (store.model_dir(first), None)
    store.activate(second)
    assert (store.current_sha256(), store.previous_sha256()) == (second, first)
    assert (store.links_dir / "current").is_symlink()


def test_activating_the_current_model_again_makes_it_what_a_rollback_keeps(
    store: ModelStore,
) -> None:
    # A deployment of the bytes that already serve: if it fails, they must go on serving
    # (before, the rollback went to the model before them, or to no model at all).
    first, second = staged(store, b"v1"), staged(store, b"v2")
    store.activate(first)
    store.activate(second)
    store.activate(second)
    assert (store.current_sha256(), store.previous_sha256()) == (second, second)
    assert store.rollback(from_sha256=second) == second


def test_activating_an_unstaged_model_is_refused(store: ModelStore) -> None:
    first = staged(store, b"v1")
    store.activate(first)
    with pytest.raises(StoreError):
        store.activate(hashlib.sha256(b"never staged").hexdigest())
    assert store.current_sha256() == first


def test_rollback_returns_to_the_previous_model(store: ModelStore) -> None:
    first, second = staged(store, b"v1"), staged(store, b"v2")
    store.activate(first)
    store.activate(second)
    store.rollback(from_sha256=second)
    assert store.current_sha256() == first
    store.rollback(from_sha256=second)  # idempotent: a retried rollback is harmless
    assert store.current_sha256() == first


def test_rollback_from_a_model_that_never_became_current_does_nothing(store: ModelStore) -> None:
    first, second, third = staged(store, b"v1"), staged(store, b"v2"), staged(store, b"v3")
    store.activate(first)
    store.activate(second)
    # The switch to ``third`` never happened: ``second`` serves and must stay.
    store.rollback(from_sha256=third)
    assert store.current_sha256() == second


# Each row: what happened to the store before (activate a model, or roll back from one),
# the model the rollback is from (None: whatever is current), and the (current, previous)
# it must leave. Rolling back twice must leave the same.
Step = tuple[str, str]  # ("activate" | "rollback", model)
ROLLBACKS: dict[str, tuple[list[Step], str | None, tuple[str | None, str | None]]] = {
    "second_model": ([("activate", "v1"), ("activate", "v2")], "v2", ("v1", "v1")),
    "third_model": (
        [("activate", "v1"), ("activate", "v2"), ("activate", "v3")],
        "v3",
        ("v2", "v2"),
    ),
    "switch_never_happened": ([("activate", "v1"), ("activate", "v2")], "v3", ("v2", "v1")),
    "first_model": ([("activate", "v1")], "v1", (None, None)),
    "first_model_switch_never_happened": ([], "v1", (None, None)),
    "without_from": ([("activate", "v1"), ("activate", "v2")], None, ("v1", "v1")),
    "first_model_without_from": ([("activate", "v1")], None, (None, None)),
    "empty_store": ([], None, (None, None)),
    # v1 was kept by a rollback, then deployed again (activate changes nothing) and failed:
    # it was current before that deployment, so it stays.
    "kept_model_deployed_again": (
        [("activate", "v1"), ("activate", "v2"), ("rollback", "v2"), ("activate", "v1")],
        "v1",
        ("v1", "v1"),
    ),
}


@pytest.mark.parametrize(("steps", "failed", "expected"), ROLLBACKS.values(), ids=ROLLBACKS.keys())
def test_rollback_returns_to_the_model_that_served_before_or_to_none(
    store: ModelStore,
    steps: list[Step],
    failed: str | None,
    expected: tuple[str | None, str | None],
) -> None:
    sha = {name: staged(store, name.encode()) for name in ("v1", "v2", "v3")}
    for operation, name in steps:
        if operation == "activate":
            store.activate(sha[name])
        else:
            store.rollback(from_sha256=sha[name])
    from_sha256 = None if failed is None else sha[failed]
    want = tuple(None if name is None else sha[name] for name in expected)

    for _ in range(2):  # a retried rollback is harmless
        kept = store.rollback(from_sha256=from_sha256)
        assert (store.current_sha256(), store.previous_sha256()) == want
        assert kept == want[0]
    assert (store.links_dir / "current").is_symlink() == (want[0] is not None)


def test_rolled_back_first_model_is_collected_and_nothing_is_current(store: ModelStore) -> None:
    first = staged(store, b"v1")
    store.activate(first)
    assert store.rollback(from_sha256=first) is None
    assert store.collect_garbage() == [store.model_dir(first)]
    assert ModelStore(store.root, MODEL).current() is None
    assert list(store.models_dir.iterdir()) == []


def test_rollback_to_a_missing_previous_model_is_refused_and_keeps_current(
    store: ModelStore,
) -> None:
    first, second = staged(store, b"v1"), staged(store, b"v2")
    store.activate(first)
    store.activate(second)
    os.rename(store.model_dir(first), store.staging_dir / "lost")
    with pytest.raises(StoreError):
        store.rollback(from_sha256=second)
    assert store.current_sha256() == second


def test_garbage_collection_keeps_what_is_referenced(store: ModelStore) -> None:
    old, prev, cur, kept = (staged(store, v) for v in (b"v0", b"v1", b"v2", b"v3"))
    for sha in (old, prev, cur):
        store.activate(sha)
    (store.staging_dir / "partial.download").write_bytes(b"half")
    (store.staging_dir / ".stage-leftover").mkdir()
    os.symlink("../../models/nowhere", store.links_dir / ".current.tmp")
    removed = store.collect_garbage(keep=[kept])
    assert removed == [store.model_dir(old)]
    assert {p.name for p in store.models_dir.iterdir()} == {
        f"sha256-{sha}" for sha in (prev, cur, kept)
    }
    assert list(store.staging_dir.iterdir()) == []
    assert not os.path.lexists(store.links_dir / ".current.tmp")
    assert (store.current_sha256(), store.previous_sha256()) == (cur, prev)


def test_symlink_pointing_outside_the_store_is_an_error(store: ModelStore) -> None:
    store.links_dir.mkdir(parents=True, exist_ok=True)
    os.symlink("/etc", store.links_dir / "current")
    with pytest.raises(StoreError):
        store.current()


def _three_models(store: ModelStore) -> tuple[str, str, str]:
    """``older`` was previous, ``serving`` is current, ``incoming`` is staged."""
    older, serving, incoming = (staged(store, v) for v in (b"older", b"serving", b"incoming"))
    store.activate(older)
    store.activate(serving)
    return older, serving, incoming


Links = tuple[str | None, str | None]  # (current, previous)


def _prepare(store: ModelStore, operation: str) -> tuple[Callable[[], object], set[Links]]:
    """The operation to crash, and every (current, previous) a crash may leave."""
    older, serving, incoming = _three_models(store)
    if operation == "stage":
        sha, source = write_artifact(store.root.parent, b"brand new")
        return lambda: store.stage(sha, "model.onnx", source), {(serving, older)}
    if operation == "activate":
        # Untouched; previous moved first; or switched. Never current=incoming with
        # previous=older: rollback would then skip the model that was serving.
        allowed: set[Links] = {(serving, older), (serving, serving), (incoming, serving)}
        return lambda: store.activate(incoming), allowed
    store.activate(incoming)
    if operation == "rollback":
        return lambda: store.rollback(from_sha256=incoming), {
            (incoming, serving),
            (serving, serving),
        }
    return store.collect_garbage, {(incoming, serving)}


def _count_syscalls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, operation: str) -> int:
    run, _ = _prepare(ModelStore(tmp_path / "dry-run", MODEL), operation)
    with crash_at(monkeypatch, None) as calls:
        run()
    return calls[0]


OPERATIONS = ["stage", "activate", "rollback", "collect_garbage"]


@pytest.mark.parametrize("operation", OPERATIONS)
def test_a_crash_at_any_syscall_leaves_a_complete_current_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    total = _count_syscalls(tmp_path, monkeypatch, operation)
    assert total > 3
    for k in range(total + 1):
        store = ModelStore(tmp_path / f"{operation}-{k}", MODEL)
        run, allowed = _prepare(store, operation)
        with crash_at(monkeypatch, k), pytest.raises(Crash) if k < total else _no_crash():
            run()
        rebooted = ModelStore(store.root, MODEL)
        assert rebooted.current() is not None, f"no current model after a crash at syscall {k}"
        assert_every_model_dir_is_complete(rebooted)
        links = (rebooted.current_sha256(), rebooted.previous_sha256())
        assert links in allowed, f"{operation} crashed at syscall {k} left {links}"


def test_recovery_after_a_crash_during_activation_restores_the_serving_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    total = _count_syscalls(tmp_path, monkeypatch, "activate")
    for k in range(total + 1):
        store = ModelStore(tmp_path / f"recover-{k}", MODEL)
        _, serving, incoming = _three_models(store)
        with crash_at(monkeypatch, k), pytest.raises(Crash) if k < total else _no_crash():
            store.activate(incoming)
        # The journal said "activating": the daemon rolls back from the incoming model.
        ModelStore(store.root, MODEL).rollback(from_sha256=incoming)
        assert ModelStore(store.root, MODEL).current_sha256() == serving, f"crash at syscall {k}"


# A device's first model: its activation, then its rollback, crashed at every syscall.
# Either may leave the model current or nothing; never a dangling link. The journal then
# says rolling_back, and rolling back again must leave nothing current.
FIRST_MODEL_OPERATIONS = ["activate", "rollback"]


@pytest.mark.parametrize("operation", FIRST_MODEL_OPERATIONS)
def test_a_crash_at_any_syscall_of_a_first_model_update_then_recovery_leaves_nothing_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    def prepare(store: ModelStore) -> tuple[str, Callable[[], object]]:
        first = staged(store, b"first")
        if operation == "activate":
            return first, lambda: store.activate(first)
        store.activate(first)
        return first, lambda: store.rollback(from_sha256=first)

    _, dry_run = prepare(ModelStore(tmp_path / "dry-run", MODEL))
    with crash_at(monkeypatch, None) as calls:
        dry_run()
    total = calls[0]
    assert total >= 2
    for k in range(total + 1):
        store = ModelStore(tmp_path / f"{operation}-{k}", MODEL)
        first, run = prepare(store)
        with crash_at(monkeypatch, k), pytest.raises(Crash) if k < total else _no_crash():
            run()
        rebooted = ModelStore(store.root, MODEL)
        links = (rebooted.current_sha256(), rebooted.previous_sha256())
        assert links in {(first, None), (None, None)}, f"crash at syscall {k} left {links}"
        if links[0] is not None:
            assert rebooted.current() == rebooted.model_dir(first)
        assert rebooted.rollback(from_sha256=first) is None
        assert (rebooted.current_sha256(), rebooted.previous_sha256()) == (None, None)


@contextmanager
def _no_crash() -> Iterator[None]:
    yield


# Several models in one store (ADR 0003) ----------------------------------------------


def test_two_models_share_the_content_and_keep_each_others_files(store: ModelStore) -> None:
    other = ModelStore(store.root, "vision", pins=store.pins)
    digits_v1, digits_v2 = staged(store, b"d1"), staged(store, b"d2")
    store.activate(digits_v1)
    store.activate(digits_v2)
    vision_v1, vision_v2 = staged(other, b"v1"), staged(other, b"v2")
    other.activate(vision_v1)
    other.activate(vision_v2)
    incoming = staged(other, b"v3")
    store.pins.add(incoming)  # an update of vision is under way

    assert store.collect_garbage() == []
    assert other.collect_garbage() == []

    assert ModelStore.models_in(store.root) == ["digits", "vision"]
    assert (store.current_sha256(), store.previous_sha256()) == (digits_v2, digits_v1)
    assert (other.current_sha256(), other.previous_sha256()) == (vision_v2, vision_v1)
    assert other.artifact_path(incoming) is not None


def test_removing_one_models_slot_leaves_the_other_serving(store: ModelStore) -> None:
    other = ModelStore(store.root, "vision", pins=store.pins)
    digits = staged(store, b"d1")
    store.activate(digits)
    vision = staged(other, b"v1")
    other.activate(vision)

    assert other.remove_slot() is True
    removed = other.collect_garbage()

    assert removed == [store.model_dir(vision)]
    assert other.current_sha256() is None
    assert ModelStore.models_in(store.root) == ["digits"]
    assert store.current_sha256() == digits
    assert store.current() is not None
    assert other.remove_slot() is False  # idempotent: a retained order comes again


def test_the_one_model_layout_is_adopted_into_a_slot(store: ModelStore) -> None:
    old, serving = staged(store, b"old"), staged(store, b"serving")
    os.symlink(f"models/sha256-{serving}", store.root / "current")
    os.symlink(f"models/sha256-{old}", store.root / "previous")
    assert ModelStore.legacy_current_sha256(store.root) == serving

    store.adopt_legacy_links()
    store.adopt_legacy_links()  # a crash after the first: repeating it changes nothing

    assert (store.current_sha256(), store.previous_sha256()) == (serving, old)
    assert not os.path.lexists(store.root / "current")
    assert not os.path.lexists(store.root / "previous")
    assert ModelStore.legacy_current_sha256(store.root) is None
