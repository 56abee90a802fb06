"""The controller's errors::

ControllerError
├── ConfigError          settings that cannot be read or are invalid
│   └── BrokerAuthError  the MQTT broker refused the controller's credentials
├── KeyStoreError        the key directory is missing, incomplete or already used
├── NotFoundError        a model, version, release or artifact that does not exist
├── ConflictError        a request that contradicts what is stored
├── ModelRejectedError   an uploaded model or a variant refused, with the reason
├── UploadTooLargeError  an upload over its size limit
├── BadRequestError      a request that is malformed in a way the schema cannot say
└── JobError             a converter job crashed, was killed or timed out
"""

from __future__ import annotations

__all__ = [
    "BadRequestError",
    "BrokerAuthError",
    "ConfigError",
    "ConflictError",
    "ControllerError",
    "JobError",
    "KeyStoreError",
    "ModelRejectedError",
    "NotFoundError",
    "UploadTooLargeError",
]


class ControllerError(Exception):
    """Root of every error raised by the controller package."""


class ConfigError(ControllerError):
    """Settings that cannot be read or are invalid."""


class BrokerAuthError(ConfigError):
    """The MQTT broker refused the controller's credentials: retrying cannot help, an
    operator must fix ``mqtt_username``/``mqtt_password`` (or the broker's users)."""


class KeyStoreError(ControllerError):
    """The key directory cannot be used as asked."""


class NotFoundError(ControllerError):
    """The thing asked for does not exist."""


class ConflictError(ControllerError):
    """The request contradicts what is stored (e.g. an I/O signature change)."""


class ModelRejectedError(ControllerError):
    """A model or variant was refused; ``kind`` says why in one word."""

    def __init__(self, message: str, kind: str = "rejected") -> None:
        super().__init__(message)
        self.kind = kind


class UploadTooLargeError(ControllerError):
    """An upload exceeds its size limit."""


class BadRequestError(ControllerError):
    """A malformed request the schema cannot express (multipart parts, for example)."""


class JobError(ControllerError):
    """A converter job crashed, was killed by a limit, or timed out."""
