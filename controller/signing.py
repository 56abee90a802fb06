"""The controller's signing keys, loaded once at start.

On first start with an empty key directory the controller creates its keys, as
``edgefleet keys init`` does. Without ``EDGEFLEET_KEY_PASSPHRASE`` it then generates a
passphrase and keeps it beside the keys (mode 0600) so that a laptop demo restarts
unattended; production operators run ``keys init`` themselves, keep ``root.key.pem``
offline and pass the passphrase in the environment.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from protocol import Envelope, ProtocolError, Role, SigningKey, TrustRoot

from .errors import ConfigError
from .keystore import KeyStore

__all__ = ["PASSPHRASE_ENV", "PASSPHRASE_FILE", "Signer", "load_or_create_signer"]

logger = logging.getLogger(__name__)

PASSPHRASE_ENV = "EDGEFLEET_KEY_PASSPHRASE"  # noqa: S105 - a variable name, not a secret
PASSPHRASE_FILE = "passphrase"  # noqa: S105 - a file name


@dataclass(frozen=True)
class Signer:
    trust_root: TrustRoot
    trust_root_envelope: Envelope
    trust_root_path: Path
    release_key: SigningKey
    deployment_key: SigningKey


def load_or_create_signer(keys_dir: Path, environ: Mapping[str, str] | None = None) -> Signer:
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
        return Signer(
            trust_root=store.load_trust_root(),
            trust_root_envelope=store.load_trust_root_envelope(),
            trust_root_path=store.trust_root_path,
            release_key=store.load_signing_key(Role.RELEASE, passphrase),
            deployment_key=store.load_signing_key(Role.DEPLOYMENT, passphrase),
        )
    except ProtocolError as exc:
        raise ConfigError(f"cannot load the signing keys in {keys_dir}: {exc}") from exc
