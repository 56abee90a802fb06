"""The controller's errors, in one tree; the API answers each with the status shown.

::

    ControllerError                    500  root of every error the controller raises
    ├── ConfigError                    500  settings that cannot be read or are invalid
    │   ├── BrokerAuthError            500  the MQTT broker refused the controller's login
    │   ├── MissingPassphraseError     500  no variable, credential or file has a key's passphrase
    │   └── WrongPassphraseError       500  a signing key's passphrase does not unlock it
    ├── KeyStoreError                  500  the key directory is missing, incomplete or used
    ├── NotFoundError                  404  a model, version, release, device or artifact
    ├── ConflictError                  409  a request that contradicts what is stored
    │   └── ReleaseKeyOfflineError     409  a release to sign while the release key is offline
    ├── ModelRejectedError             422  an uploaded model or a variant refused, with why
    ├── JobError                       422  a converter job crashed, was killed or timed out
    ├── UploadTooLargeError            413  an upload (or an imported file) over its size limit
    ├── UpstreamError                  502  a server the controller fetches from (an MLflow
    │                                       registry) unreachable, slow, or answering nonsense
    ├── BridgeError                    500  the MQTT bridge cannot publish now
    ├── SampleDeviceMismatchError      403  a device uploading a sample of another device
    ├── SampleNotOrderedError          403  a sample of a model never ordered captured there
    ├── SampleQuotaError               507  the device holds its quota of samples already
    └── BadRequestError                400  malformed in a way the schema cannot say
        ├── SelectorError              400  a label selector or label list that does not parse
        └── EnrollmentRefusedError     400  an enrollment token that cannot be used

    RolloutSpecError (ValueError)      400  the rollout core's own error: waves, quotas,
                                            durations, policies (``rollouts.core``)

The rollout core raises a plain ``ValueError`` subclass so that it imports nothing of the
controller; ``app.STATUS_BY_ERROR`` maps it like a ``BadRequestError``. Pydantic's
validation errors are FastAPI's 422. ``BrokerAuthError`` stops the fleet service and
``edgefleet controller serve`` (exit 4); ``BridgeError`` is the rollout loop's to retry.
"""

from __future__ import annotations

__all__ = [
    "BadRequestError",
    "BridgeError",
    "BrokerAuthError",
    "ConfigError",
    "ConflictError",
    "ControllerError",
    "EnrollmentRefusedError",
    "JobError",
    "KeyStoreError",
    "MissingPassphraseError",
    "ModelRejectedError",
    "NotFoundError",
    "ReleaseKeyOfflineError",
    "SampleDeviceMismatchError",
    "SampleNotOrderedError",
    "SampleQuotaError",
    "SelectorError",
    "UploadTooLargeError",
    "UpstreamError",
    "WrongPassphraseError",
]


class ControllerError(Exception):
    """Root of every error raised by the controller package."""


class ConfigError(ControllerError):
    """Settings that cannot be read or are invalid."""


class BrokerAuthError(ConfigError):
    """The MQTT broker refused the controller's credentials: retrying cannot help, an
    operator must fix ``mqtt_username``/``mqtt_password`` (or the broker's users)."""


class MissingPassphraseError(ConfigError):
    """No variable, systemd credential (or, for the controller, file) has a signing key's
    passphrase."""


class WrongPassphraseError(ConfigError):
    """A signing key's passphrase does not unlock it (or the key file is damaged)."""


class KeyStoreError(ControllerError):
    """The key directory cannot be used as asked."""


class NotFoundError(ControllerError):
    """The thing asked for does not exist."""


class ConflictError(ControllerError):
    """The request contradicts what is stored (e.g. an I/O signature change)."""


class ReleaseKeyOfflineError(ConflictError):
    """The release key is kept off this controller (``release_key = "offline"``)."""


class ModelRejectedError(ControllerError):
    """A model or variant was refused; ``kind`` says why in one word."""

    def __init__(self, message: str, kind: str = "rejected") -> None:
        super().__init__(message)
        self.kind = kind


class UploadTooLargeError(ControllerError):
    """An upload exceeds its size limit."""


class UpstreamError(ControllerError):
    """A server the controller fetches from on a caller's behalf (an MLflow registry) is
    unreachable, timed out, or answered something the controller cannot use. Not the
    caller's fault and not the controller's: a gateway error (502) to whoever asked."""


class BadRequestError(ControllerError):
    """A malformed request the schema cannot express (multipart parts, for example)."""


class BridgeError(ControllerError):
    """The bridge cannot publish now: not connected, or no acknowledgement in time."""


class JobError(ControllerError):
    """A converter job crashed, was killed by a limit, or timed out."""


class SelectorError(BadRequestError, ValueError):
    """A selector or label list that does not parse; ``position`` is a 0-based offset."""

    def __init__(self, message: str, *, text: str, position: int) -> None:
        super().__init__(f"{message} at position {position} in {text!r}")
        self.position = position


class EnrollmentRefusedError(BadRequestError):
    """The enrollment token cannot be used; the message never says why (on purpose)."""

    MESSAGE = "the enrollment token is unknown, expired or already used"

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


class SampleDeviceMismatchError(ControllerError):
    """A device uploading a sample that says it is another device's."""


class SampleNotOrderedError(ControllerError):
    """A sample of a model whose capture was never turned on for the device."""


class SampleQuotaError(ControllerError):
    """The device already holds its quota of samples on the controller."""
