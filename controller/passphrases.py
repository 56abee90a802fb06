"""Which passphrase unlocks which signing key.

Each key (root, release, deployment) has its own passphrase, looked up in this order:

1. ``EDGEFLEET_ROOT_KEY_PASSPHRASE``, ``EDGEFLEET_RELEASE_KEY_PASSPHRASE``,
   ``EDGEFLEET_DEPLOYMENT_KEY_PASSPHRASE``: the key's own variable, or a systemd
   credential of that name (``LoadCredential=``/``LoadCredentialEncrypted=``, read from
   ``$CREDENTIALS_DIRECTORY``, so the passphrase is in no environment at all);
2. ``EDGEFLEET_KEY_PASSPHRASE`` (variable or credential): one passphrase for every key
   not given its own (how every key was unlocked before keys had separate passphrases);
3. ``KEYS_DIR/passphrase.ROLE``: what the controller generated for that key when it
   created the keys itself (auto mode, a laptop demo);
4. ``KEYS_DIR/passphrase``: the one file auto mode wrote for all three keys before, so a
   data directory made then keeps starting.

The files are looked at only by the controller (``Passphrases`` with a key directory);
the ``edgefleet keys`` and ``release`` commands take the environment or a prompt.

Invariants: a passphrase's value is never logged nor put in a message (messages say
where it came from: a variable or a file); a generated passphrase is on disk (0600,
fsync'd) before any key is encrypted with it; reading one key's passphrase file gives
nothing that unlocks another key.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from durable import PRIVATE_FILE_MODE, write_atomic
from protocol import KeyFormatError, Role, SigningKey

from .errors import ConfigError, MissingPassphraseError, WrongPassphraseError
from .keystore import KeyStore

__all__ = [
    "PASSPHRASE_ENV",
    "SHARED_PASSPHRASE_FILE",
    "Passphrase",
    "Passphrases",
    "decrypt_key",
    "passphrase_env",
    "passphrase_file",
    "unlock_key",
]

PASSPHRASE_ENV = "EDGEFLEET_KEY_PASSPHRASE"  # noqa: S105 - a variable name, not a secret
SHARED_PASSPHRASE_FILE = "passphrase"  # noqa: S105 - a file name
CREDENTIALS_DIRECTORY_ENV = "CREDENTIALS_DIRECTORY"  # set by systemd for LoadCredential=
GENERATED_PASSPHRASE_BYTES = 32


def passphrase_env(role: Role) -> str:
    """The variable that holds ``role``'s own passphrase."""
    return f"EDGEFLEET_{role.value.upper()}_KEY_PASSPHRASE"


def passphrase_file(keys_dir: Path, role: Role) -> Path:
    """Where auto mode keeps the passphrase it generated for ``role``'s key."""
    return keys_dir / f"{SHARED_PASSPHRASE_FILE}.{role.value}"


@dataclass(frozen=True)
class Passphrase:
    """A key's passphrase and where it came from (for messages; never the value)."""

    secret: bytes = field(repr=False)
    origin: str


@dataclass(frozen=True)
class Passphrases:
    """Each key's passphrase from ``environ`` and, when given, the key directory's files."""

    environ: Mapping[str, str] = field(repr=False)
    keys_dir: Path | None = None

    @classmethod
    def one_for_every_key(cls, secret: bytes) -> Passphrases:
        """The same passphrase for every key, as ``EDGEFLEET_KEY_PASSPHRASE`` gives it."""
        return cls({PASSPHRASE_ENV: secret.decode("utf-8")})

    def find(self, role: Role) -> Passphrase | None:
        """``role``'s passphrase from the first place that has one (module docstring)."""
        found = self.from_environment(role)
        if found is not None or self.keys_dir is None:
            return found
        for path in (passphrase_file(self.keys_dir, role), self.keys_dir / SHARED_PASSPHRASE_FILE):
            try:
                secret = path.read_bytes().strip()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise ConfigError(f"cannot read the {role.value} key's passphrase: {exc}") from exc
            if secret:
                return Passphrase(secret, str(path))
        return None

    def from_environment(self, role: Role) -> Passphrase | None:
        """``role``'s passphrase from a variable or a systemd credential, if one has it."""
        credentials = self.environ.get(CREDENTIALS_DIRECTORY_ENV, "")
        for name in (passphrase_env(role), PASSPHRASE_ENV):
            value = self.environ.get(name, "")
            if value:
                return Passphrase(value.encode("utf-8"), name)
            if credentials:
                path = Path(credentials) / name
                try:
                    secret = path.read_bytes().rstrip(b"\r\n")
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise ConfigError(f"cannot read the credential {name}: {exc}") from exc
                if secret:
                    return Passphrase(secret, f"the systemd credential {name}")
        return None

    def get(self, role: Role) -> Passphrase:
        found = self.find(role)
        if found is None:
            where = f" or put it in {passphrase_file(self.keys_dir, role)}" if self.keys_dir else ""
            raise MissingPassphraseError(
                f"no passphrase for the {role.value} key: set {passphrase_env(role)} "
                f"(or {PASSPHRASE_ENV} for every key){where}"
            )
        return found

    def get_or_generate(self, role: Role) -> Passphrase:
        """For keys about to be created: ``role``'s passphrase, or a new random one
        written to its own 0600 file (auto mode). A file left by a start that died before
        its keys were written is used again."""
        found = self.from_environment(role)
        if found is not None:
            return found
        if self.keys_dir is None:
            return self.get(role)
        path = passphrase_file(self.keys_dir, role)
        try:
            secret = path.read_bytes().strip()
        except FileNotFoundError:
            secret = b""
        if not secret:
            secret = secrets.token_urlsafe(GENERATED_PASSPHRASE_BYTES).encode("ascii")
            self.keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(path, secret, mode=PRIVATE_FILE_MODE)
        return Passphrase(secret, str(path))


def unlock_key(store: KeyStore, role: Role, passphrase: Passphrase) -> SigningKey:
    """``role``'s private key in ``store``; a wrong passphrase is a ``WrongPassphraseError``
    that names the key and where its passphrase came from."""
    try:
        return store.load_signing_key(role, passphrase.secret)
    except KeyFormatError as exc:
        raise _wrong(role, store.private_key_path(role), passphrase, exc) from exc


def decrypt_key(pem: bytes, role: Role, passphrase: Passphrase, *, path: Path) -> SigningKey:
    """``unlock_key`` for a key file outside a key directory (read from ``path``)."""
    try:
        return SigningKey.from_encrypted_pem(pem, passphrase.secret)
    except KeyFormatError as exc:
        raise _wrong(role, path, passphrase, exc) from exc


def _wrong(role: Role, path: Path, passphrase: Passphrase, exc: Exception) -> WrongPassphraseError:
    return WrongPassphraseError(
        f"the passphrase from {passphrase.origin} does not unlock the {role.value} key "
        f"{path} ({exc})"
    )
