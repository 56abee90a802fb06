"""The operator's key directory: one Ed25519 key per role and the signed trust roots.

Layout of a key directory::

    root.key.pem  release.key.pem  deployment.key.pem   private keys, encrypted, mode 0600
    root.pub.pem  release.pub.pem  deployment.pub.pem   public keys
    trust-root.json                                     the current signed trust root
    trust-roots/1.json, 2.json, ...                     every version, for devices to walk
    retired/ROLE.vN.key.pem                             keys replaced by rotation at version N

Each private key is encrypted with its own role's passphrase, given by the caller
(``controller.passphrases`` says where they come from); this module never stores one.

Invariants: nothing is ever overwritten in place (temp file, fsync, ``os.replace``);
``init`` refuses a directory that already holds a trust root; a rotated trust root is
verified against the previous one with the same rules devices use before it is written.

A rotation is atomic across its files: the new key pair is first written beside the
current one (``ROLE.key.pem.next``, ``ROLE.pub.pem.next``), then trust root N+1 is
written (``trust-root.json`` is the commit point), then the pair is moved into place.
``finish_interrupted_rotation`` (run before every load and rotation) completes a pair the
current trust root lists and drops one it does not: after a crash at any step the
directory holds the old set or the new set, never a key its trust root does not list.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from durable import PRIVATE_FILE_MODE, PUBLIC_FILE_MODE, write_atomic
from protocol import (
    Envelope,
    ProtocolError,
    PublicKey,
    Role,
    SigningKey,
    TrustRoot,
    verify_initial_trust_root,
    verify_trust_root_rotation,
)

from .errors import KeyStoreError

__all__ = [
    "DEFAULT_TRUST_ROOT_LIFETIME",
    "TRUST_ROOT_FILE",
    "KeyStore",
]

DEFAULT_TRUST_ROOT_LIFETIME = timedelta(days=365)
TRUST_ROOT_FILE = "trust-root.json"
STAGED_SUFFIX = ".next"


@dataclass(frozen=True)
class KeyStore:
    """A key directory on the local disk."""

    directory: Path

    def private_key_path(self, role: Role) -> Path:
        return self.directory / f"{role.value}.key.pem"

    def public_key_path(self, role: Role) -> Path:
        return self.directory / f"{role.value}.pub.pem"

    @property
    def trust_root_path(self) -> Path:
        return self.directory / TRUST_ROOT_FILE

    def trust_root_version_path(self, version: int) -> Path:
        return self.directory / "trust-roots" / f"{version}.json"

    def init(
        self,
        *,
        passphrases: Mapping[Role, bytes],
        now: datetime,
        lifetime: timedelta = DEFAULT_TRUST_ROOT_LIFETIME,
    ) -> TrustRoot:
        """Create a key per role, each encrypted with its own passphrase, and trust root
        version 1, signed by the root key."""
        if self.trust_root_path.exists():
            raise KeyStoreError(f"{self.trust_root_path} exists: refusing to replace keys")
        missing = [role.value for role in Role if not passphrases.get(role)]
        if missing:
            raise KeyStoreError(f"no passphrase for the {', '.join(missing)} key")
        keys = {role: SigningKey.generate() for role in Role}
        trust_root = TrustRoot.build(
            version=1,
            expires=now + lifetime,
            roles={role: ([key.public_key], 1) for role, key in keys.items()},
        )
        envelope = trust_root.sign([keys[Role.ROOT]])
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # private keys inside
        for role, key in keys.items():
            self._write_key_pair(role, key, passphrases[role])
        self._write_trust_root(trust_root.version, envelope)
        return trust_root

    def rotate(
        self,
        role: Role,
        *,
        root_passphrase: bytes,
        key_passphrase: bytes,
        now: datetime,
        lifetime: timedelta = DEFAULT_TRUST_ROOT_LIFETIME,
    ) -> TrustRoot:
        """Replace ``role``'s key and write trust root N+1, signed for rotation.

        The new key is encrypted with ``key_passphrase``, which must unlock the key it
        replaces: a controller reloading its keys after the rotation then unlocks the new
        one with the passphrase it already has, and a mistyped one changes nothing.
        """
        self.finish_interrupted_rotation()
        current = self.load_trust_root()
        old_root_key = self.load_signing_key(Role.ROOT, root_passphrase)
        self.load_signing_key(role, key_passphrase)  # the check above, before any write
        new_key = SigningKey.generate()
        roles = {r: (list(current.role_keys(r).values()), current.threshold(r)) for r in Role}
        roles[role] = ([new_key.public_key], 1)
        successor = TrustRoot.build(
            version=current.version + 1, expires=now + lifetime, roles=roles
        )
        # N+1 needs the old root's signature (authority) and, for a root rotation, the new
        # root key's own (proof that someone holds it).
        signers = [old_root_key] + ([new_key] if role is Role.ROOT else [])
        envelope = successor.sign(signers)
        try:
            verify_trust_root_rotation(current, envelope)
        except ProtocolError as exc:  # pragma: no cover - would be a bug in this module
            raise KeyStoreError(f"rotated trust root does not verify: {exc}") from exc
        retired = self.directory / "retired" / f"{role.value}.v{current.version}.key.pem"
        retired.parent.mkdir(exist_ok=True)
        write_atomic(retired, self.private_key_path(role).read_bytes(), mode=PRIVATE_FILE_MODE)
        self._write_key_pair(role, new_key, key_passphrase, suffix=STAGED_SUFFIX)
        self._write_trust_root(successor.version, envelope)  # the commit point
        self._promote_staged(role)
        return successor

    def finish_interrupted_rotation(self) -> None:
        """Complete or undo a rotation a crash interrupted (see the module docstring)."""
        if not self.trust_root_path.exists():
            return
        trusted: TrustRoot | None = None
        for role in Role:
            private = self._staged(self.private_key_path(role))
            public = self._staged(self.public_key_path(role))
            if not private.exists() and not public.exists():
                continue
            if trusted is None:
                trusted = self.load_trust_root()
            # The new public key: still staged or, with only the private key left staged,
            # moved already (the public key is staged first, so it never lags behind).
            source = public if public.exists() else self.public_key_path(role)
            try:
                key_id = PublicKey.from_pem(source.read_bytes()).key_id
            except (OSError, ProtocolError):
                key_id = None
            if key_id in trusted.role_keys(role):
                self._promote_staged(role)  # committed: roll forward
            else:
                for path in (private, public):  # never committed: roll back
                    path.unlink(missing_ok=True)

    def load_trust_root(self) -> TrustRoot:
        return verify_initial_trust_root(self.load_trust_root_envelope())

    def load_trust_root_envelope(self) -> Envelope:
        try:
            return Envelope.from_bytes(self.trust_root_path.read_bytes())
        except FileNotFoundError as exc:
            raise KeyStoreError(
                f"no {TRUST_ROOT_FILE} in {self.directory}: run 'edgefleet keys init' first"
            ) from exc

    def load_signing_key(self, role: Role, passphrase: bytes) -> SigningKey:
        self.finish_interrupted_rotation()
        path = self.private_key_path(role)
        try:
            return SigningKey.from_encrypted_pem(path.read_bytes(), passphrase)
        except FileNotFoundError as exc:
            raise KeyStoreError(f"no {role.value} key at {path}") from exc

    def load_public_key(self, role: Role) -> PublicKey:
        return PublicKey.from_pem(self.public_key_path(role).read_bytes())

    def _write_key_pair(
        self, role: Role, key: SigningKey, passphrase: bytes, *, suffix: str = ""
    ) -> None:
        private, public = self.private_key_path(role), self.public_key_path(role)
        # Public first: a staged private key always has its public key staged or in place.
        public_pem = key.public_key.to_pem()
        write_atomic(public.with_name(public.name + suffix), public_pem, mode=PUBLIC_FILE_MODE)
        encrypted = key.to_encrypted_pem(passphrase)
        write_atomic(private.with_name(private.name + suffix), encrypted, mode=PRIVATE_FILE_MODE)

    @staticmethod
    def _staged(path: Path) -> Path:
        return path.with_name(path.name + STAGED_SUFFIX)

    def _promote_staged(self, role: Role) -> None:
        for path in (self.public_key_path(role), self.private_key_path(role)):
            staged = self._staged(path)
            if staged.exists():
                os.replace(staged, path)

    def _write_trust_root(self, version: int, envelope: Envelope) -> None:
        data = envelope.to_bytes()
        history = self.trust_root_version_path(version)
        history.parent.mkdir(exist_ok=True)
        write_atomic(history, data, mode=PUBLIC_FILE_MODE)
        write_atomic(self.trust_root_path, data, mode=PUBLIC_FILE_MODE)
