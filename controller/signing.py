"""The controller's signing keys, loaded at start and again whenever the trust root changes.

``edgefleet keys rotate`` on the controller's key directory takes effect without a
restart: before each use the ``Signer`` looks at ``trust-root.json`` and, when it changed,
loads the new trust root and keys. It switches only to a set whose keys are the ones that
trust root lists (a rotation caught half-written keeps the old set, and says so), and
``trust_roots_after`` hands every version a device still has to walk to the deployments
signed for it, so a rotation reaches devices with the next deployment.

Each key is unlocked with its own passphrase (``controller.passphrases``): the serving
controller unlocks only what it signs with, the deployment key and, unless it is kept
offline, the release key. It never loads the root key: the trust root it hands out is
the signed ``trust-root.json``, and only ``edgefleet keys init|rotate`` sign one.

On first start with an empty key directory the controller creates its keys, as
``edgefleet keys init`` does. A key whose passphrase the environment does not give gets
a generated one, in its own file beside the keys (``passphrase.ROLE``, mode 0600), so
that a laptop demo restarts unattended; production operators run ``keys init``
themselves, keep ``root.key.pem`` and ``release.key.pem`` offline and pass the
deployment key's passphrase in the environment.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from protocol import MAX_CARRIED_TRUST_ROOTS, Envelope, ProtocolError, Role, SigningKey, TrustRoot

from .errors import ConfigError, ControllerError, ReleaseKeyOfflineError
from .keystore import KeyStore
from .passphrases import SHARED_PASSPHRASE_FILE, Passphrases, unlock_key

__all__ = [
    "Signer",
    "load_or_create_signer",
]

logger = logging.getLogger(__name__)


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
        self, store: KeyStore, passphrases: Passphrases, *, release_key_online: bool = True
    ) -> None:
        self._store = store
        self._passphrases = passphrases
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
        keys = {role: unlock_key(store, role, self._passphrases.get(role)) for role in roles}
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
    passphrases = Passphrases(os.environ if environ is None else environ, keys_dir)
    store = KeyStore(keys_dir)
    if not store.trust_root_path.exists():
        _create_keys(store, passphrases)
    elif (keys_dir / SHARED_PASSPHRASE_FILE).exists():
        logger.warning(
            "%s holds the passphrase of every key in %s (an older edgefleet wrote it): "
            "whoever reads it can unlock all of them (development only)",
            keys_dir / SHARED_PASSPHRASE_FILE,
            keys_dir,
        )
    try:
        return Signer(store, passphrases, release_key_online=release_key_online)
    except ProtocolError as exc:
        raise ConfigError(f"cannot load the signing keys in {keys_dir}: {exc}") from exc


def _create_keys(store: KeyStore, passphrases: Passphrases) -> None:
    from_environment = {role for role in Role if passphrases.from_environment(role) is not None}
    chosen = {role: passphrases.get_or_generate(role) for role in Role}
    generated = [chosen[role].origin for role in Role if role not in from_environment]
    if generated:
        logger.warning(
            "no passphrase in the environment for %d of the keys: generated one for each, "
            "in %s (development only)",
            len(generated),
            ", ".join(generated),
        )
    store.init(
        passphrases={role: passphrase.secret for role, passphrase in chosen.items()},
        now=datetime.now(UTC),
    )
    logger.warning(
        "created signing keys in %s; the trust root for devices is %s. In production run "
        "'edgefleet keys init' yourself and keep root.key.pem and release.key.pem offline.",
        store.directory,
        store.trust_root_path,
    )
