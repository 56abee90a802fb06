"""The errors the agent raises, each with a stable ``reason`` code that events carry.

Every failure is an ``AgentError``. Three families matter to callers:

- ``RefusalError``: bad data. The agent refuses the document, artifact or model, changes
  nothing and reports ``reason``. Retrying the same input gives the same answer.
- ``LocalStateError``: the agent's own files cannot be trusted or written. Stop and
  report; never guess (a reset high-water mark would re-open every replay).
- ``TransportError``: the network failed. ``retryable`` is true; the same request may
  succeed later. Like python-tuf's ``DownloadError``, it never means the data was bad.

::

    AgentError                            agent_error
    ├── RefusalError                      refused
    │   ├── BadSignatureError             bad_signature        the role's signatures do not hold
    │   │   ├── WrongPayloadTypeError     wrong_payload_type   an envelope of another document type
    │   │   └── MalformedDocumentError    malformed_document   not even a parseable document
    │   │       └── UnsupportedSchemaError  unsupported_schema  a schema_version it does not read
    │   ├── WrongDeviceError              wrong_device
    │   ├── EnrollmentAnswerError         enrollment_answer    the enrollment answer is unusable
    │   │   ├── TrustRootMismatchError    trust_root_mismatch  not the trust root expected
    │   │   └── ControllerCaMismatchError controller_ca_mismatch  not the CA or certificate expected
    │   ├── ModelMismatchError            model_mismatch       a release of another model
    │   ├── InsufficientMemoryError       insufficient_memory  does not fit the memory budget
    │   ├── BadCapturePolicyError         bad_capture_policy   capture args that are no policy
    │   ├── TooManyModelsError            too_many_models      beyond MAX_MODELS_PER_DEVICE
    │   ├── ReplayedDeploymentError       replayed_deployment  sequence below the highest accepted
    │   │   └── DuplicateDeploymentError  duplicate_deployment the accepted one, redelivered
    │   ├── ReplayedCommandError          replayed_command
    │   │   └── DuplicateCommandError     duplicate_command
    │   ├── ExpiredDeploymentError        expired_deployment
    │   ├── ExpiredCommandError           expired_command
    │   ├── DowngradeError                downgrade
    │   ├── TrustRootRotationError        trust_root_rotation
    │   ├── TrustRootExpiredError         trust_root_expired
    │   ├── UnsafeFileNameError           unsafe_file_name
    │   ├── ArtifactError                 artifact_refused
    │   │   ├── HashMismatchError         hash_mismatch
    │   │   ├── LengthMismatchError       length_mismatch
    │   │   ├── DownloadTooLargeError     download_too_large
    │   │   ├── DownloadDeadlineError     download_deadline
    │   │   └── InsufficientDiskError     insufficient_disk    not enough free space to stage it
    │   └── ModelCheckError               model_check_failed
    │       ├── ModelLoadError            model_load_failed
    │       ├── SignatureMismatchError    io_signature_mismatch
    │       ├── GoldenMismatchError       golden_mismatch
    │       ├── CheckBundleError          check_bundle_invalid the signed check bundle does not read
    │       ├── NonFiniteOutputError      nonfinite_output
    │       ├── LatencyBudgetError        latency_budget_exceeded
    │       └── SandboxKilledError        sandbox_killed       crashed, hit a limit or timed out
    ├── InferenceError                    inference_error      the serving path
    │   ├── ModelNotReadyError            model_not_ready      no version serves yet
    │   ├── UnknownModelError             unknown_model
    │   ├── InferenceFailedError          inference_failed     the runtime failed: the model's error
    │   └── InferenceRequestError         bad_inference_request  the client's error
    │       ├── MalformedRequestError     malformed_request
    │       ├── InputNameError            input_names
    │       ├── OutputNameError           output_names
    │       ├── InputDatatypeError        input_datatype
    │       ├── InputShapeError           input_shape
    │       ├── InputDataError            input_data
    │       └── RequestTooLargeError      request_too_large
    ├── IllegalTransitionError            illegal_transition   a caller bug: no such table entry
    ├── TransitionCapError                transition_cap       crash loop broken by the cap
    ├── LocalStateError                   local_state
    │   ├── TrustStateError               trust_state_unreadable
    │   ├── JournalError                  journal_unreadable
    │   ├── StoreError                    store_error
    │   ├── LocalWriteError               local_write_failed   a full disk, the descriptor limit…
    │   └── OutboxError                   outbox_error         the on-disk outbox cannot be used
    ├── ConfigurationError                configuration        wrong settings; never retried
    │   ├── BrokerAuthError               broker_auth          the broker refused the credentials
    │   ├── EnrollmentRefusedError        enrollment_refused   the controller refused the enrollment
    │   └── AgentConfigExistsError        agent_config_exists  agent.toml exists and no --force
    └── TransportError                    transport            retryable
        ├── ConnectionFailedError         connection_failed
        ├── TransportTimeoutError         transport_timeout
        ├── HttpStatusError               http_status
        └── AnswerTooLargeError           answer_too_large     a controller answer over its cap

Protocol errors are translated once, here (``translate_protocol_error``); nothing else in
the agent maps ``protocol`` exceptions.
"""

from __future__ import annotations

from typing import ClassVar

# protocol's errors module, not its namespace: the pure OIP codec (agent.serving.codec)
# imports this module, and the namespace also holds protocol.backoff's randomness.
from protocol import errors as protocol_errors

__all__ = [
    "AgentConfigExistsError",
    "AgentError",
    "AnswerTooLargeError",
    "ArtifactError",
    "BadCapturePolicyError",
    "BadSignatureError",
    "BrokerAuthError",
    "CheckBundleError",
    "ConfigurationError",
    "ConnectionFailedError",
    "ControllerCaMismatchError",
    "DowngradeError",
    "DownloadDeadlineError",
    "DownloadTooLargeError",
    "DuplicateCommandError",
    "DuplicateDeploymentError",
    "EnrollmentAnswerError",
    "EnrollmentRefusedError",
    "ExpiredCommandError",
    "ExpiredDeploymentError",
    "GoldenMismatchError",
    "HashMismatchError",
    "HttpStatusError",
    "IllegalTransitionError",
    "InferenceError",
    "InferenceFailedError",
    "InferenceRequestError",
    "InputDataError",
    "InputDatatypeError",
    "InputNameError",
    "InputShapeError",
    "InsufficientDiskError",
    "InsufficientMemoryError",
    "JournalError",
    "LatencyBudgetError",
    "LengthMismatchError",
    "LocalStateError",
    "LocalWriteError",
    "MalformedDocumentError",
    "MalformedRequestError",
    "ModelCheckError",
    "ModelLoadError",
    "ModelMismatchError",
    "ModelNotReadyError",
    "NonFiniteOutputError",
    "OutboxError",
    "OutputNameError",
    "RefusalError",
    "ReplayedCommandError",
    "ReplayedDeploymentError",
    "RequestTooLargeError",
    "SandboxKilledError",
    "SignatureMismatchError",
    "StoreError",
    "TooManyModelsError",
    "TransitionCapError",
    "TransportError",
    "TransportTimeoutError",
    "TrustRootExpiredError",
    "TrustRootMismatchError",
    "TrustRootRotationError",
    "TrustStateError",
    "UnknownModelError",
    "UnsafeFileNameError",
    "UnsupportedSchemaError",
    "WrongDeviceError",
    "WrongPayloadTypeError",
    "translate_protocol_error",
]


class AgentError(Exception):
    """Root of every error the agent raises."""

    reason: ClassVar[str] = "agent_error"
    retryable: ClassVar[bool] = False


class RefusalError(AgentError):
    """Bad data: refused with no change of state, reported with ``reason``."""

    reason = "refused"


class BadSignatureError(RefusalError):
    """The document cannot be shown to be signed by its role."""

    reason = "bad_signature"


class WrongPayloadTypeError(BadSignatureError):
    """A valid envelope of another document type (type confusion)."""

    reason = "wrong_payload_type"


class MalformedDocumentError(BadSignatureError):
    """Bytes that are not a well-formed envelope or document: nothing to verify."""

    reason = "malformed_document"


class UnsupportedSchemaError(MalformedDocumentError):
    """A document of a format version this agent does not read (newer, or retired)."""

    reason = "unsupported_schema"


class WrongDeviceError(RefusalError):
    reason = "wrong_device"


class ReplayedDeploymentError(RefusalError):
    """A deployment sequence not above the highest this device accepted."""

    reason = "replayed_deployment"


class DuplicateDeploymentError(ReplayedDeploymentError):
    """The deployment already accepted, delivered again (MQTT is at-least-once).

    Callers ignore it quietly; it is not an attack and needs no event.
    """

    reason = "duplicate_deployment"


class ModelMismatchError(RefusalError):
    """A deployment of one model that carries a release of another."""

    reason = "model_mismatch"


class InsufficientMemoryError(RefusalError):
    """The model would not fit in the memory budget beside the models already serving."""

    reason = "insufficient_memory"


class BadCapturePolicyError(RefusalError):
    """A capture command whose ``args`` are not a capture policy."""

    reason = "bad_capture_policy"


class TooManyModelsError(RefusalError):
    """A deployment of a new model when the device already holds as many as it may."""

    reason = "too_many_models"


class ReplayedCommandError(RefusalError):
    reason = "replayed_command"


class DuplicateCommandError(ReplayedCommandError):
    reason = "duplicate_command"


class ExpiredDeploymentError(RefusalError):
    reason = "expired_deployment"


class ExpiredCommandError(RefusalError):
    reason = "expired_command"


class DowngradeError(RefusalError):
    """A release version below the highest committed, without ``rollback``."""

    reason = "downgrade"


class TrustRootRotationError(RefusalError):
    """A newer trust root that may not follow the trusted one (§5.2)."""

    reason = "trust_root_rotation"


class TrustRootExpiredError(RefusalError):
    """The trust root to verify against is past its expiry: its keys are stale."""

    reason = "trust_root_expired"


class UnsafeFileNameError(RefusalError):
    """A file name that could escape its directory."""

    reason = "unsafe_file_name"


class ArtifactError(RefusalError):
    """Artifact bytes that are not the ones the release signed."""

    reason = "artifact_refused"


class HashMismatchError(ArtifactError):
    reason = "hash_mismatch"


class LengthMismatchError(ArtifactError):
    reason = "length_mismatch"


class DownloadTooLargeError(ArtifactError):
    """The server sent more than the signed length (endless-data attack)."""

    reason = "download_too_large"


class DownloadDeadlineError(ArtifactError):
    """The download did not finish in time (slow-retrieval attack): not retried."""

    reason = "download_deadline"


class ModelCheckError(RefusalError):
    """The model failed the sandboxed pre-activation check."""

    reason = "model_check_failed"


class ModelLoadError(ModelCheckError):
    reason = "model_load_failed"


class SignatureMismatchError(ModelCheckError):
    """The model's inputs or outputs differ from the release's I/O signature."""

    reason = "io_signature_mismatch"


class GoldenMismatchError(ModelCheckError):
    reason = "golden_mismatch"


class CheckBundleError(ModelCheckError):
    """The release's check bundle (hash verified) does not read as one: nothing to check with."""

    reason = "check_bundle_invalid"


class NonFiniteOutputError(ModelCheckError):
    reason = "nonfinite_output"


class LatencyBudgetError(ModelCheckError):
    reason = "latency_budget_exceeded"


class InsufficientDiskError(ArtifactError):
    """Not enough free disk to stage the artifact (checked before downloading)."""

    reason = "insufficient_disk"


class SandboxKilledError(ModelCheckError):
    """The sandboxed check crashed, was killed by a limit, or ran out of time."""

    reason = "sandbox_killed"


class InferenceError(AgentError):
    """Root of the errors of the serving path."""

    reason = "inference_error"


class ModelNotReadyError(InferenceError):
    reason = "model_not_ready"


class UnknownModelError(InferenceError):
    reason = "unknown_model"


class InferenceFailedError(InferenceError):
    """The runtime failed on inputs that fit the model's signature."""

    reason = "inference_failed"


class InferenceRequestError(InferenceError):
    """The request does not fit the model; the same request fails the same way again."""

    reason = "bad_inference_request"


class MalformedRequestError(InferenceRequestError):
    reason = "malformed_request"


class InputNameError(InferenceRequestError):
    reason = "input_names"


class OutputNameError(InferenceRequestError):
    reason = "output_names"


class InputDatatypeError(InferenceRequestError):
    reason = "input_datatype"


class InputShapeError(InferenceRequestError):
    reason = "input_shape"


class InputDataError(InferenceRequestError):
    reason = "input_data"


class RequestTooLargeError(InferenceRequestError):
    reason = "request_too_large"


class IllegalTransitionError(AgentError):
    """An event the update table has no entry for in the current state: a caller bug."""

    reason = "illegal_transition"


class TransitionCapError(AgentError):
    """A deployment took more transitions than the cap: a crash loop, broken."""

    reason = "transition_cap"


class LocalStateError(AgentError):
    """The agent's own files cannot be read, trusted or written."""

    reason = "local_state"


class TrustStateError(LocalStateError):
    """The trust state file is missing or corrupt; high-water marks are never reset."""

    reason = "trust_state_unreadable"


class JournalError(LocalStateError):
    reason = "journal_unreadable"


class StoreError(LocalStateError):
    """The model store cannot do what was asked; ``current`` is left as it was."""

    reason = "store_error"


class LocalWriteError(LocalStateError):
    """A file of the agent's own could not be written: a full disk, the descriptor limit
    ("Too many open files"), permissions. The file keeps its old content."""

    reason = "local_write_failed"


class OutboxError(LocalStateError):
    reason = "outbox_error"


class ConfigurationError(AgentError):
    """Settings or credentials are wrong: retrying cannot help, an operator must act."""

    reason = "configuration"


class BrokerAuthError(ConfigurationError):
    """The broker refused the credentials; the agent does not retry in a loop."""

    reason = "broker_auth"


class TransportError(AgentError):
    """The network failed; the same request may succeed later."""

    reason = "transport"
    retryable = True


class ConnectionFailedError(TransportError):
    reason = "connection_failed"


class TransportTimeoutError(TransportError):
    reason = "transport_timeout"


class AnswerTooLargeError(TransportError):
    """A controller's answer over the size the agent reads; the next round tries again."""

    reason = "answer_too_large"


class HttpStatusError(TransportError):
    reason = "http_status"

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


# Most specific first: the first matching protocol class wins.
_PROTOCOL_TRANSLATIONS: tuple[
    tuple[type[protocol_errors.ProtocolError], type[RefusalError]], ...
] = (
    (protocol_errors.PayloadTypeError, WrongPayloadTypeError),
    (protocol_errors.UnsupportedSchemaError, UnsupportedSchemaError),
    (protocol_errors.MalformedDocumentError, MalformedDocumentError),
    (protocol_errors.SignatureError, BadSignatureError),
    (protocol_errors.RotationError, TrustRootRotationError),
    # A trust root whose key bytes are unreadable cannot verify anything.
    (protocol_errors.KeyFormatError, MalformedDocumentError),
)


def translate_protocol_error(exc: protocol_errors.ProtocolError, *, what: str) -> RefusalError:
    """The agent refusal for a protocol error; raise it ``from exc``.

    ``what`` names the document in the message ("deployment", "release in deployment 7").
    Expiry is not translated here: only the caller knows which document expired.
    """
    for protocol_type, agent_type in _PROTOCOL_TRANSLATIONS:
        if isinstance(exc, protocol_type):
            return agent_type(f"{what}: {exc}")
    return RefusalError(f"{what}: {exc}")


class EnrollmentRefusedError(ConfigurationError):
    """The controller refused the enrollment (a 4xx answer); ``message`` is its reason."""

    reason = "enrollment_refused"


class EnrollmentAnswerError(RefusalError):
    """The controller's answer is not a usable enrollment (fields, trust root)."""

    reason = "enrollment_answer"


class TrustRootMismatchError(EnrollmentAnswerError):
    """The answer's trust root is not the one this device was told to expect."""

    reason = "trust_root_mismatch"


class ControllerCaMismatchError(EnrollmentAnswerError):
    """The controller's CA, or the certificate it issued, is not what this device expects
    (the ``--ca-sha256`` pin, the key the device made, the device id)."""

    reason = "controller_ca_mismatch"


class AgentConfigExistsError(ConfigurationError):
    """``agent.toml`` exists and ``force`` was not given."""

    reason = "agent_config_exists"
