"""The controller's signing keys, loaded at start and again whenever the trust root changes.

``edgefleet keys rotate`` on the controller's key directory takes effect without a
restart: before each use the ``Signer`` looks at ``trust-root.json`` and, when it changed,
loads the new trust root and keys. It switches only to a set whose keys are the ones that
trust root lists (a rotation caught half-written keeps the old set, and says so), and
``trust_roots_after`` hands every version a device still has to walk to the deployments
signed for it, so a rotation reaches devices with the next deployment.

On first start with an empty key directory the controller creates its keys, as
``edgefleet keys init`` does. Without ``EDGEFLEET_KEY_PASSPHRASE`` it then generates a
passphrase and keeps it beside the keys (mode 0600) so that a laptop demo restarts
unattended; production operators run ``keys init`` themselves, keep ``root.key.pem``
offline and pass the passphrase in the environment.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from protocol import MAX_CARRIED_TRUST_ROOTS, Envelope, ProtocolError, Role, SigningKey, TrustRoot

from .errors import ConfigError, ControllerError, ReleaseKeyOfflineError
from .keystore import KeyStore

__all__ = [
    "PASSPHRASE_ENV",
    "PASSPHRASE_FILE",
    "Signer",
    "load_or_create_signer",
]

logger = logging.getLogger(__name__)

PASSPHRASE_ENV = "EDGEFLEET_KEY_PASSPHRASE"  # noqa: S105 - a variable name, not a secret
PASSPHRASE_FILE = "passphrase"  # noqa: S105 - a file name


@dataclass(frozen=True)
class _KeySet:
    trust_root: TrustRoot
    trust_root_envelope: Envelope
    release_key: SigningKey | None  # None while the release key is kept offline
    deployment_key: SigningKey
    seen: tuple[int, int, int]  # trust-root.json's (inode, size, mtime) when loaded


class Signer:
    """The trust root and the keys that sign, always the newest consistent set on disk."""

    def __init__(
        self, store: KeyStore, passphrase: bytes, *, release_key_online: bool = True
    ) -> None:
        self._store = store
        self._passphrase = passphrase
        self._release_key_online = release_key_online
        self._lock = threading.Lock()
        self._keys = self._load(self._stat())

    @property
    def trust_root(self) -> TrustRoot:
        return self._current().trust_root

    @property
    def trust_root_envelope(self) -> Envelope:
        return self._current().trust_root_envelope

    @property
    def release_key(self) -> SigningKey:
        key = self._current().release_key
        if key is None:
            raise ReleaseKeyOfflineError(
                "the release key is offline on this controller: prepare the release here "
                "(edgefleet release prepare), sign it where the key is (edgefleet release "
                "sign) and upload it (edgefleet release upload)"
            )
        return key

    @property
    def deployment_key(self) -> SigningKey:
        return self._current().deployment_key

    def trust_roots_after(self, version: int | None) -> list[Envelope]:
        """The trust roots a device holding ``version`` must walk to reach the current
        one (all versions after 1 when its version is not known), oldest first."""
        current = self._current().trust_root.version
        first = max((version or 1) + 1, current - MAX_CARRIED_TRUST_ROOTS + 1)
        chain = []
        for number in range(first, current + 1):
            path = self._store.trust_root_version_path(number)
            try:
                chain.append(Envelope.from_bytes(path.read_bytes()))
            except (OSError, ProtocolError) as exc:
                # Without a link the device cannot walk: carry nothing, it keeps refusing
                # loudly (a missing history file is the operator's to restore).
                logger.error("trust root v%d is unreadable at %s: %s", number, path, exc)
                return []
        return chain

    def _stat(self) -> tuple[int, int, int]:
        stat = self._store.trust_root_path.stat()
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    def _current(self) -> _KeySet:
        keys = self._keys
        try:
            seen = self._stat()
        except OSError:
            return keys
        if seen == keys.seen:
            return keys
        with self._lock:
            if self._keys.seen != seen:
                try:
                    self._keys = self._load(seen)
                    logger.info("loaded trust root v%d", self._keys.trust_root.version)
                except (ProtocolError, ControllerError, OSError) as exc:
                    logger.error("kept trust root v%d: %s", keys.trust_root.version, exc)
                    self._keys = dataclasses.replace(keys, seen=seen)  # not again at every use
            return self._keys

    def _load(self, seen: tuple[int, int, int]) -> _KeySet:
        store = self._store
        trust_root = store.load_trust_root()
        roles = (Role.RELEASE, Role.DEPLOYMENT) if self._release_key_online else (Role.DEPLOYMENT,)
        keys = {role: store.load_signing_key(role, self._passphrase) for role in roles}
        for role, key in keys.items():
            if key.key_id not in trust_root.role_keys(role):
                raise ConfigError(
                    f"the {role.value} key in {store.directory} is not one trust root "
                    f"v{trust_root.version} lists (a rotation not finished?)"
                )
        return _KeySet(
            trust_root=trust_root,
            trust_root_envelope=store.load_trust_root_envelope(),
            release_key=keys.get(Role.RELEASE),
            deployment_key=keys[Role.DEPLOYMENT],
            seen=seen,
        )


def load_or_create_signer(
    keys_dir: Path, environ: Mapping[str, str] | None = None, *, release_key_online: bool = True
) -> Signer:
    env = os.environ if environ is None else environ
    store = KeyStore(keys_dir)
    passphrase_file = keys_dir / PASSPHRASE_FILE
    passphrase = env.get(PASSPHRASE_ENV, "").encode()
    if not store.trust_root_path.exists():
        if not passphrase:
            passphrase = secrets.token_urlsafe(32).encode()
            keys_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(passphrase_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(passphrase)
            logger.warning(
                "no %s: generated a passphrase in %s (development only)",
                PASSPHRASE_ENV,
                passphrase_file,
            )
        store.init(passphrase=passphrase, now=datetime.now(UTC))
        logger.warning(
            "created signing keys in %s; the trust root for devices is %s. In production run "
            "'edgefleet keys init' yourself and keep root.key.pem offline.",
            keys_dir,
            store.trust_root_path,
        )
    if not passphrase:
        if not passphrase_file.exists():
            raise ConfigError(f"set {PASSPHRASE_ENV} to unlock the keys in {keys_dir}")
        passphrase = passphrase_file.read_bytes().strip()
    try:
        return Signer(store, passphrase, release_key_online=release_key_online)
    except ProtocolError as exc:
        raise ConfigError(f"cannot load the signing keys in {keys_dir}: {exc}") from exc
