"""MQTT passwords, hashed in Mosquitto's ``$7$`` format so a password file is an export.

Format (what ``mosquitto_passwd`` writes since Mosquitto 2.0)::

    $7$<iterations>$<base64 of the 12-byte salt>$<base64 of PBKDF2-HMAC-SHA512, 64 bytes>

Invariants:
- a password is never stored, only its hash; every hash has its own random salt;
- ``verify_mqtt_password`` compares digests with ``hmac.compare_digest`` and answers False
  (never raises) for a malformed hash, so a corrupt row cannot crash the broker's check;
- the iteration count is read from the hash, so hashes made by ``mosquitto_passwd`` (or
  with another count) verify too.

101 iterations is Mosquitto's own choice. The passwords edgefleet generates carry 192
bits of entropy, so stretching adds nothing; hashing keeps a leaked database from
handing out broker logins.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

import bcrypt

__all__ = [
    "MQTT_PASSWORD_ITERATIONS",
    "MQTT_SALT_BYTES",
    "generate_mqtt_password",
    "hash_mqtt_password",
    "hash_nats_password",
    "verify_mqtt_password",
]

MQTT_PASSWORD_ITERATIONS = 101
NATS_BCRYPT_ROUNDS = 4
MQTT_SALT_BYTES = 12
_DIGEST_BYTES = 64
# Bounds what a hash read from a file or row may ask of the CPU.
_MAX_ITERATIONS = 1_000_000
_PREFIX = "$7$"


def generate_mqtt_password() -> str:
    """A fresh random password (192 bits, URL-safe text)."""
    return secrets.token_urlsafe(24)


def hash_mqtt_password(password: str, *, salt: bytes | None = None) -> str:
    """The ``$7$`` hash of ``password``; ``salt`` is for tests, else 12 random bytes."""
    salt = secrets.token_bytes(MQTT_SALT_BYTES) if salt is None else salt
    digest = _pbkdf2(password, salt, MQTT_PASSWORD_ITERATIONS)
    return f"{_PREFIX}{MQTT_PASSWORD_ITERATIONS}${_b64(salt)}${_b64(digest)}"


def hash_nats_password(password: str) -> str:
    """The bcrypt hash of ``password``, as NATS takes it (``$2a$``). The lowest cost:
    the password is 192 random bits, which no cost factor makes easier or harder to
    guess, and NATS checks the hash at every device connect (a reconnect storm of a
    whole fleet)."""
    salt = bcrypt.gensalt(rounds=NATS_BCRYPT_ROUNDS, prefix=b"2a")
    return bcrypt.hashpw(password.encode("utf-8"), salt).decode("ascii")


def verify_mqtt_password(password: str, hashed: str) -> bool:
    """True when ``password`` matches ``hashed``; False for a mismatch or a malformed hash."""
    parts = hashed.split("$")
    # "$7$101$salt$hash".split("$") == ["", "7", "101", "salt", "hash"]
    if len(parts) != 5 or parts[0] != "" or parts[1] != "7" or not parts[2].isdigit():
        return False
    iterations = int(parts[2])
    if not 1 <= iterations <= _MAX_ITERATIONS:
        return False
    try:
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except (binascii.Error, ValueError):
        return False
    if not salt or len(expected) != _DIGEST_BYTES:
        return False
    return hmac.compare_digest(_pbkdf2(password, salt, iterations), expected)


def _pbkdf2(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
