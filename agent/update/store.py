"""The device's model files: content-addressed directories and, per model, two symlinks.

Layout under ``root``::

    models/sha256-<hex>/<filename>   one verified artifact per directory, with the
        check-bundle-<hex2>.npz          check bundles of the releases that shipped it
    staging/                         directories being built, trash
    slots/<model>/current  -> ../../models/sha256-<hex>  what serves (absent: nothing)
    slots/<model>/previous -> ../../models/sha256-<hex>  what ``rollback`` returns to

A ``ModelStore`` is one model's view (its ``slots/<model>`` links) of the shared content
directory; the stores of a device's models share ``root`` and a set of pinned hashes
(artifacts an update in flight has staged but not activated yet). Everything below about
``current`` and ``previous`` holds per model; nothing one model does moves another's links.

Invariants:
- a ``models/sha256-<hex>`` directory exists only complete, holding one artifact whose
  bytes hash to ``<hex>``: ``stage`` builds it in ``staging/``, hashes and fsyncs the file
  and the directory, then publishes it with one ``rename``; ``collect_garbage``
  unpublishes with one ``rename`` into ``staging/`` before deleting anything;
- a check bundle in a model directory is named by its own hash and its bytes hash to it:
  ``stage_check_bundle`` hashes and fsyncs it in ``staging/`` and renames it in, so it is
  there whole or not at all; it leaves with its model;
- ``current`` and ``previous`` are only ever replaced by ``os.replace`` of a freshly made
  temporary symlink, followed by an fsync of the slot directory: each is at every instant either
  its old target or its new one. ``current`` is removed (one ``unlink``, then an fsync
  of the slot directory) only by the rollback of a device's first model, which has no model to
  return to: the device then serves nothing, as before that model was activated;
- whenever ``current`` exists it points at a complete model directory: nothing removes a
  directory that any model's ``current`` or ``previous`` names or that is pinned, and
  ``activate`` and ``rollback`` only point at directories that exist;
- ``remove_slot`` unpublishes a model's links with one ``rename`` of its slot directory
  into ``staging/``: the model has both links or none;
- the file system's refusals (a full disk, "Too many open files") surface as
  ``LocalWriteError``, never as a raw ``OSError``; a link may then have switched without
  its fsync, which is why the updater treats the error as a failed activation and rolls
  back.

``activate(new)`` runs in ``slots/<model>/`` (``S``), with ``C`` the current model::

    1. symlink .previous.tmp -> ../../models/sha256-C   (skipped if previous is already C)
    2. rename  .previous.tmp -> previous; fsync S
    3. symlink .current.tmp  -> ../../models/sha256-new
    4. rename  .current.tmp  -> current;  fsync S

A crash before 4 leaves ``current`` at C; after 4, at ``new``; both complete. ``previous``
moves first, so whenever ``current`` is ``new``, ``previous`` is already C, and
``rollback(from_sha256=new)`` (which does nothing unless ``current`` is ``new``) brings
back exactly C after a crash at any point. On a device's first activation there is no C:
steps 1 and 2 are skipped, ``previous`` stays absent, and ``rollback(from_sha256=new)``
removes ``current``. A temporary symlink left by a crash is replaced by the next switch
and removed by ``collect_garbage``.

Durability assumes a POSIX file system where ``rename`` is atomic and directory fsync
persists it (ext4, f2fs, xfs, btrfs); ``root`` must be one file system.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import ParamSpec, TypeVar

from durable import fsync_dir, fsync_file

from ..errors import HashMismatchError, LocalWriteError, StoreError
from .names import check_bundle_name, verify_safe_file_name, verify_sha256_hex

__all__ = ["HASH_CHUNK_BYTES", "ModelStore"]

HASH_CHUNK_BYTES = 1024 * 1024
_MODEL_DIR = re.compile(r"sha256-(?P<sha>[0-9a-f]{64})")
_BUNDLE_FILE = re.compile(r"check-bundle-[0-9a-f]{64}\.npz")
_LINK_TARGET = re.compile(r"\.\./\.\./models/sha256-(?P<sha>[0-9a-f]{64})")
_CURRENT, _PREVIOUS = "current", "previous"
_P = ParamSpec("_P")
_R = TypeVar("_R")


@contextlib.contextmanager
def _writing(what: str) -> Iterator[None]:
    """The file system's refusal (a full disk, "Too many open files") as the agent's own."""
    try:
        yield
    except OSError as exc:
        raise LocalWriteError(f"model store: cannot {what}: {exc}") from exc


def _writes(what: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """A method whose ``OSError`` becomes a ``LocalWriteError`` (see ``_writing``)."""

    def decorate(method: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(method)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            with _writing(what):
                return method(*args, **kwargs)

        return wrapper

    return decorate


class ModelStore:
    """Verified model files and the ``current``/``previous`` switch, crash-safe."""

    def __init__(self, root: Path, model: str, *, pins: set[str] | None = None) -> None:
        """``pins`` is shared by the stores of one device: hashes garbage collection keeps."""
        verify_safe_file_name(model)
        self.root = root
        self.model = model
        self.models_dir = root / "models"
        self.staging_dir = root / "staging"
        self.slots_dir = root / "slots"
        self.links_dir = self.slots_dir / model
        self.pins: set[str] = pins if pins is not None else set()
        with _writing(f"create {root}"):
            for directory in (root, self.models_dir, self.staging_dir, self.slots_dir):
                if not directory.is_dir():
                    directory.mkdir(parents=True, exist_ok=True)
                    fsync_dir(directory.parent)

    @staticmethod
    def models_in(root: Path) -> list[str]:
        """The models that have a slot under ``root`` (a current or previous version)."""
        try:
            return sorted(entry.name for entry in (root / "slots").iterdir() if entry.is_dir())
        except FileNotFoundError:
            return []

    def model_dir(self, sha256: str) -> Path:
        return self.models_dir / f"sha256-{verify_sha256_hex(sha256)}"

    def current(self) -> Path | None:
        """The directory of the serving model, or ``None`` before the first activation."""
        return self._existing_dir(self.current_sha256())

    def previous(self) -> Path | None:
        return self._existing_dir(self.previous_sha256())

    def current_sha256(self) -> str | None:
        return self._link_sha256(_CURRENT)

    def previous_sha256(self) -> str | None:
        return self._link_sha256(_PREVIOUS)

    @_writes("stage a model")
    def stage(self, sha256: str, filename: str, source_path: Path) -> Path:
        """Move a verified file into ``models/sha256-<hex>/<filename>``; return its path.

        Idempotent: if that model is already stored, ``source_path`` is discarded. The
        bytes are hashed once more before publishing (content addressing must not lie);
        on a mismatch nothing is published and ``HashMismatchError`` is raised. The
        source is consumed either way.
        """
        verify_safe_file_name(filename)
        final = self.model_dir(sha256)
        if final.is_dir():
            return self._already_staged(final, filename, source_path)
        building = Path(tempfile.mkdtemp(prefix=".stage-", dir=self.staging_dir))
        try:
            staged = building / filename
            _move(source_path, staged)
            staged.chmod(0o444)
            digest = _sha256_of(staged)
            if digest != sha256:
                raise HashMismatchError(f"{filename} hashes to {digest}, not {sha256}")
            fsync_file(staged)
            fsync_dir(building)
            try:
                os.rename(building, final)
            except OSError as exc:
                # Published meanwhile by another stage of the same bytes.
                if exc.errno in {errno.EEXIST, errno.ENOTEMPTY} and final.is_dir():
                    shutil.rmtree(building, ignore_errors=True)
                    return self._already_staged(final, filename, staged)
                raise
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        fsync_dir(self.models_dir)
        fsync_dir(self.staging_dir)
        return final / filename

    def artifact_path(self, sha256: str) -> Path | None:
        """The stored artifact of ``sha256`` under whatever name it was staged, or ``None``.

        The same bytes may come back in another release under another file name: the
        content, not the name, identifies a stored model.
        """
        directory = self.model_dir(sha256)
        try:
            names = [e.name for e in directory.iterdir() if not _BUNDLE_FILE.fullmatch(e.name)]
        except FileNotFoundError:
            return None
        if len(names) != 1:
            raise StoreError(f"{directory.name} holds {len(names)} artifacts, not one")
        return directory / names[0]

    @_writes("stage a check bundle")
    def stage_check_bundle(self, model_sha256: str, bundle_sha256: str, source_path: Path) -> Path:
        """Move a verified check bundle into its (staged) model's directory; return its path.

        Idempotent, like ``stage``: a bundle already there wins and ``source_path`` is
        discarded. The bytes are hashed once more before the rename that publishes them.
        """
        final = self.model_dir(model_sha256) / check_bundle_name(bundle_sha256)
        if not final.parent.is_dir():
            raise StoreError(f"model {model_sha256[:12]} is not staged: no place for its bundle")
        if final.is_file():
            with contextlib.suppress(FileNotFoundError):
                if not final.samefile(source_path):
                    source_path.unlink()
            return final
        building = self.staging_dir / f".bundle-{secrets.token_hex(8)}"
        try:
            _move(source_path, building)
            building.chmod(0o444)
            digest = _sha256_of(building)
            if digest != bundle_sha256:
                raise HashMismatchError(f"check bundle hashes to {digest}, not {bundle_sha256}")
            fsync_file(building)
            os.rename(building, final)
        except BaseException:
            building.unlink(missing_ok=True)
            raise
        fsync_dir(final.parent)
        fsync_dir(self.staging_dir)
        return final

    @_writes("activate a model")
    def activate(self, sha256: str) -> None:
        """``previous`` := ``current``; ``current`` := the staged model (see the module).

        Activating what is current already makes it ``previous`` too: a rollback of that
        deployment keeps it serving.
        """
        target = self.model_dir(sha256)
        if not target.is_dir():
            raise StoreError(f"model {sha256[:12]} is not staged")
        old = self.current_sha256()
        if old == sha256:
            # The same bytes deployed again (as another release): what serves now is also
            # what a rollback must return to, never "no model".
            if self.previous_sha256() != old:
                self._point(_PREVIOUS, old)
            return
        if old is not None and self.previous_sha256() != old:
            self._point(_PREVIOUS, old)
        self._point(_CURRENT, sha256)

    @_writes("roll back")
    def rollback(self, *, from_sha256: str | None = None) -> str | None:
        """Undo the last activation: ``current`` := ``previous``, or no model at all.

        Returns what ``current`` names afterwards (``None``: nothing serves).

        With ``from_sha256`` (the model that failed), only if it is what serves: when
        the switch to it never happened, ``current`` already is the model to keep, and
        this does nothing. Nor does it when ``previous`` is ``current`` too: that model
        was already current before (a rollback ran, or it was deployed again). Without
        a ``previous``, ``current`` is the first model this device ran, and ``current``
        is removed (see the module). Idempotent. ``StoreError`` when ``previous`` names
        a missing model; ``current`` is then left as it is.
        """
        current = self.current_sha256()
        if current is None or (from_sha256 is not None and current != from_sha256):
            return current
        previous = self.previous_sha256()
        if previous == current:
            return current
        if previous is None:
            self._unpoint(_CURRENT)
            return None
        if not self.model_dir(previous).is_dir():
            raise StoreError(f"previous model {previous[:12]} is missing")
        self._point(_CURRENT, previous)
        return previous

    @_writes("collect unused models")
    def collect_garbage(self, *, keep: Iterable[str] = ()) -> list[Path]:
        """Remove models neither symlink (nor ``keep``) names, and all staging leftovers.

        Call it only while no update is in flight (or pass that update's sha256 in
        ``keep``): staging is emptied. Returns the model directories removed.
        """
        referenced = {*self._all_linked(), *self.pins, *keep}
        removed: list[Path] = []
        for entry in sorted(self.models_dir.iterdir()):
            match = _MODEL_DIR.fullmatch(entry.name)
            if match is None or match["sha"] in referenced:
                continue  # not ours to judge, or in use
            # Unpublish atomically first: a half-deleted model dir must never be visible.
            os.rename(entry, self.staging_dir / f".trash-{secrets.token_hex(8)}")
            removed.append(entry)
        if removed:
            fsync_dir(self.models_dir)
        for leftover in self.staging_dir.iterdir():
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        for model in self.models_in(self.root):
            for name in (_CURRENT, _PREVIOUS):
                with contextlib.suppress(FileNotFoundError):
                    (self.slots_dir / model / f".{name}.tmp").unlink()
        fsync_dir(self.staging_dir)
        fsync_dir(self.root)
        return removed

    @staticmethod
    def legacy_current_sha256(root: Path) -> str | None:
        """What ``root/current`` named in the one-model layout of agents before ADR 0003."""
        try:
            target = os.readlink(root / _CURRENT)
        except OSError:
            return None
        match = re.fullmatch(r"models/sha256-(?P<sha>[0-9a-f]{64})", target)
        return match["sha"] if match else None

    @_writes("move the one-model links into a slot")
    def adopt_legacy_links(self) -> None:
        """Move ``root/current`` and ``root/previous`` of the old layout into this slot.

        Each link is made in the slot before the old one goes, so a crash in between
        leaves the model served from the slot, with at most a stale old link to retry.
        """
        for name in (_CURRENT, _PREVIOUS):
            old = self.root / name
            try:
                target = os.readlink(old)
            except OSError:
                continue
            match = re.fullmatch(r"models/sha256-(?P<sha>[0-9a-f]{64})", target)
            if match is not None and self._link_sha256(name) is None:
                self._point(name, match["sha"])
            old.unlink()
            fsync_dir(self.root)

    @_writes("remove a model")
    def remove_slot(self) -> bool:
        """Forget this model: both links go at once; its files go at the next collection.

        Returns whether there was anything to remove. Idempotent.
        """
        if not self.links_dir.is_dir():
            return False
        os.rename(self.links_dir, self.staging_dir / f".trash-{secrets.token_hex(8)}")
        fsync_dir(self.slots_dir)
        return True

    def _all_linked(self) -> set[str | None]:
        """What any model's ``current`` or ``previous`` names."""
        return {
            ModelStore(self.root, model, pins=self.pins)._link_sha256(name)
            for model in self.models_in(self.root)
            for name in (_CURRENT, _PREVIOUS)
        }

    def _point(self, link: str, sha256: str) -> None:
        # A fresh temporary symlink renamed over the old one: the switch is one syscall.
        if not self.links_dir.is_dir():
            self.links_dir.mkdir()
            fsync_dir(self.slots_dir)
        tmp = self.links_dir / f".{link}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(f"../../models/sha256-{sha256}", tmp)
        os.replace(tmp, self.links_dir / link)
        fsync_dir(self.links_dir)

    def _unpoint(self, link: str) -> None:
        # Removing a name is one syscall too: the link is there, or it is not.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.links_dir / link)
            fsync_dir(self.links_dir)

    def _link_sha256(self, link: str) -> str | None:
        try:
            target = os.readlink(self.links_dir / link)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"{link} is not a symlink: {exc}") from exc
        match = _LINK_TARGET.fullmatch(target)
        if match is None:
            raise StoreError(f"{link} points outside the store: {target!r}")
        return match["sha"]

    def _existing_dir(self, sha256: str | None) -> Path | None:
        if sha256 is None:
            return None
        directory = self.model_dir(sha256)
        if not directory.is_dir():
            raise StoreError(f"a symlink names model {sha256[:12]}, which is missing")
        return directory

    def _already_staged(self, final: Path, filename: str, source_path: Path) -> Path:
        # The same bytes, perhaps under another name: the stored name stays.
        stored = self.artifact_path(final.name.removeprefix("sha256-"))
        if stored is None:
            raise StoreError(f"{final.name} vanished while staging {filename}")
        with contextlib.suppress(FileNotFoundError):
            if not stored.samefile(source_path):
                source_path.unlink()
        return stored


def _move(source: Path, destination: Path) -> None:
    try:
        os.replace(source, destination)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        # Another file system (a download directory elsewhere): copy, then drop the source.
        shutil.copyfile(source, destination)
        source.unlink()


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
