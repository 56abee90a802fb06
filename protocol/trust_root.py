"""The trust root: which keys may sign what, and how many of them must.

Invariants: every key id is the SHA-256 of the key it names; every role lists only keys
the document holds, each at most once, and a threshold between 1 and that count; the
three roles ``root``, ``release`` and ``deployment`` are always present.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, Field, model_validator

from .document import Document, Model, Sha256Hex
from .keys import PublicKey, key_id_of

__all__ = ["KeyEntry", "Role", "RoleEntry", "TrustRoot"]


class Role(StrEnum):
    ROOT = "root"
    RELEASE = "release"
    DEPLOYMENT = "deployment"


class KeyEntry(Model):
    keytype: Literal["ed25519"] = "ed25519"
    scheme: Literal["ed25519"] = "ed25519"
    public: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]

    def public_key(self) -> PublicKey:
        return PublicKey(bytes.fromhex(self.public))

    @classmethod
    def of(cls, key: PublicKey) -> KeyEntry:
        return cls(public=key.raw.hex())


class RoleEntry(Model):
    keyids: list[Sha256Hex] = Field(min_length=1)
    threshold: int = Field(ge=1)

    @model_validator(mode="after")
    def _threshold_reachable(self) -> RoleEntry:
        if len(set(self.keyids)) != len(self.keyids):
            raise ValueError("a role lists a key id twice")
        if self.threshold > len(self.keyids):
            raise ValueError(
                f"threshold {self.threshold} exceeds the role's {len(self.keyids)} keys"
            )
        return self


class TrustRoot(Document):
    PAYLOAD_TYPE: ClassVar[str] = "application/vnd.edgefleet.trust-root+json"

    version: int = Field(ge=1)
    expires: AwareDatetime
    keys: dict[Sha256Hex, KeyEntry]
    roles: dict[Role, RoleEntry]

    @model_validator(mode="after")
    def _consistent(self) -> TrustRoot:
        for key_id, key in self.keys.items():
            if key_id_of(bytes.fromhex(key.public)) != key_id:
                raise ValueError(f"key id {key_id} is not the SHA-256 of its key")
        missing = set(Role) - set(self.roles)
        if missing:
            raise ValueError(f"roles missing: {', '.join(sorted(missing))}")
        for role, entry in self.roles.items():
            unknown = set(entry.keyids) - set(self.keys)
            if unknown:
                raise ValueError(f"role {role.value} lists unknown keys {sorted(unknown)}")
        return self

    def role_keys(self, role: Role) -> dict[str, PublicKey]:
        """The public keys of ``role`` by key id."""
        return {key_id: self.keys[key_id].public_key() for key_id in self.roles[role].keyids}

    def threshold(self, role: Role) -> int:
        return self.roles[role].threshold

    def role_of_key(self, key_id: str) -> list[Role]:
        return [role for role, entry in self.roles.items() if key_id in entry.keyids]

    @classmethod
    def build(
        cls,
        *,
        version: int,
        expires: datetime,
        roles: Mapping[Role, tuple[Sequence[PublicKey], int]],
    ) -> TrustRoot:
        """A trust root from each role's public keys and threshold."""
        keys = {key.key_id: KeyEntry.of(key) for pubs, _ in roles.values() for key in pubs}
        return cls(
            version=version,
            expires=expires,
            keys=keys,
            roles={
                role: RoleEntry(keyids=[key.key_id for key in pubs], threshold=threshold)
                for role, (pubs, threshold) in roles.items()
            },
        )
