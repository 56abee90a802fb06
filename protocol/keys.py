"""Ed25519 keys: generation, PEM encoding, key ids, signing and verification.

Invariants:
- a key id is the lowercase hex SHA-256 of the 32-byte raw public key, so anyone holding
  the public key can recompute it and no registry of ids is needed;
- private keys leave this module only as PEM encrypted with a non-empty passphrase;
- nothing here touches the disk: callers pass and receive bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .errors import KeyFormatError

__all__ = [
    "ED25519_PUBLIC_KEY_BYTES",
    "PublicKey",
    "SigningKey",
    "key_id_of",
]

ED25519_PUBLIC_KEY_BYTES = 32


def key_id_of(raw_public_key: bytes) -> str:
    """The key id of a raw Ed25519 public key: hex SHA-256 of its 32 bytes."""
    return hashlib.sha256(raw_public_key).hexdigest()


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key, identified by the SHA-256 of its raw bytes."""

    raw: bytes
    _key: Ed25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.raw) != ED25519_PUBLIC_KEY_BYTES:
            raise KeyFormatError(
                f"an Ed25519 public key has {ED25519_PUBLIC_KEY_BYTES} bytes, not {len(self.raw)}"
            )
        object.__setattr__(self, "_key", Ed25519PublicKey.from_public_bytes(self.raw))

    @property
    def key_id(self) -> str:
        return key_id_of(self.raw)

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True when ``signature`` is this key's Ed25519 signature over ``message``."""
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def to_pem(self) -> bytes:
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def from_pem(cls, data: bytes) -> PublicKey:
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise KeyFormatError(f"not a PEM public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFormatError(f"not an Ed25519 key: {type(key).__name__}")
        return cls(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key that signs messages."""

    _key: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> PublicKey:
        raw = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return PublicKey(raw)

    @property
    def key_id(self) -> str:
        return self.public_key.key_id

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def to_encrypted_pem(self, passphrase: bytes) -> bytes:
        """PKCS#8 PEM encrypted with ``passphrase`` (which must not be empty)."""
        if not passphrase:
            raise KeyFormatError("refusing to write a private key without a passphrase")
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )

    @classmethod
    def from_encrypted_pem(cls, data: bytes, passphrase: bytes) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(data, password=passphrase)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            # cryptography raises ValueError for a wrong passphrase and for bad PEM alike.
            raise KeyFormatError(f"cannot read the private key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFormatError(f"not an Ed25519 key: {type(key).__name__}")
        return cls(key)
