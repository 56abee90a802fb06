"""edgefleet's wire protocol: topics, documents, canonical JSON, DSSE and Ed25519.

Pure: nothing here does I/O. Bytes come in, verified documents or a ``ProtocolError``
come out. This namespace is the public API; the submodules are its implementation.
"""

from .backoff import UniformSource, backoff_delay_s
from .canonical import MAX_SAFE_INTEGER, canonical_json, parse_json
from .capture import (
    CAPTURE_ACTION,
    MAX_CAPTURE_BYTES,
    MAX_CAPTURE_PER_HOUR,
    CapturePolicy,
    CaptureReason,
    SampleMeta,
)
from .deployment import (
    MAX_CARRIED_TRUST_ROOTS,
    MAX_MODELS_PER_DEVICE,
    Command,
    Deployment,
    DesiredState,
    ProbationPolicy,
)
from .document import Document
from .dsse import MAX_ENVELOPE_BYTES, MAX_SIGNATURES, Envelope, Signature, pae, sign_envelope
from .errors import (
    BadSignatureError,
    ExpiredError,
    KeyFormatError,
    KeyNotInRoleError,
    MalformedDocumentError,
    PayloadTypeError,
    ProtocolError,
    RotationError,
    RotationVersionError,
    SignatureError,
    ThresholdNotMetError,
    TopicError,
    UnsupportedSchemaError,
)
from .histograms import LATENCY_BOUNDS_MS, LATENCY_BUCKETS, histogram_quantile
from .keys import ED25519_PUBLIC_KEY_BYTES, PublicKey, SigningKey, key_id_of
from .release import (
    DATATYPE_BYTES,
    MAX_CHECK_BUNDLE_BYTES,
    MAX_RELEASE_ENVELOPE_BYTES,
    Artifact,
    CheckBundleRef,
    Histogram,
    ReferenceProfile,
    Release,
    ReleaseRef,
    RuntimeRequirements,
    TensorSpec,
)
from .reports import (
    MAX_DRIFT_BINS,
    MAX_DRIFT_TENSORS,
    Event,
    LatencySummary,
    ModelState,
    State,
    TelemetryBatch,
    TelemetryWindow,
)
from .shadow import DEFAULT_SHADOW_CPU_FRACTION, ShadowOrder, ShadowWindow
from .topics import (
    CHANNELS,
    DEFAULT_PREFIX,
    DEVICE_ID_PATTERN,
    Channel,
    ChannelSpec,
    device_topic,
    parse_device_topic,
    subscription_filter,
    verify_device_id,
    verify_prefix,
)
from .trust_root import KeyEntry, Role, RoleEntry, TrustRoot
from .verify import (
    SIGNING_ROLE,
    verify_document,
    verify_initial_trust_root,
    verify_not_expired,
    verify_signatures,
    verify_trust_root_rotation,
)

# Every document type by its DSSE payload type, for readers that dispatch on it.
DOCUMENT_TYPES: dict[str, type[Document]] = {
    cls.PAYLOAD_TYPE: cls
    for cls in (
        TrustRoot,
        Release,
        Deployment,
        DesiredState,
        Command,
        State,
        Event,
        TelemetryWindow,
        TelemetryBatch,
    )
}

__all__ = [
    "CAPTURE_ACTION",
    "CHANNELS",
    "DATATYPE_BYTES",
    "DEFAULT_PREFIX",
    "DEFAULT_SHADOW_CPU_FRACTION",
    "DEVICE_ID_PATTERN",
    "DOCUMENT_TYPES",
    "ED25519_PUBLIC_KEY_BYTES",
    "LATENCY_BOUNDS_MS",
    "LATENCY_BUCKETS",
    "MAX_CAPTURE_BYTES",
    "MAX_CAPTURE_PER_HOUR",
    "MAX_CARRIED_TRUST_ROOTS",
    "MAX_CHECK_BUNDLE_BYTES",
    "MAX_DRIFT_BINS",
    "MAX_DRIFT_TENSORS",
    "MAX_ENVELOPE_BYTES",
    "MAX_MODELS_PER_DEVICE",
    "MAX_RELEASE_ENVELOPE_BYTES",
    "MAX_SAFE_INTEGER",
    "MAX_SIGNATURES",
    "SIGNING_ROLE",
    "Artifact",
    "BadSignatureError",
    "CapturePolicy",
    "CaptureReason",
    "Channel",
    "ChannelSpec",
    "CheckBundleRef",
    "Command",
    "Deployment",
    "DesiredState",
    "Document",
    "Envelope",
    "Event",
    "ExpiredError",
    "Histogram",
    "KeyEntry",
    "KeyFormatError",
    "KeyNotInRoleError",
    "LatencySummary",
    "MalformedDocumentError",
    "ModelState",
    "PayloadTypeError",
    "ProbationPolicy",
    "ProtocolError",
    "PublicKey",
    "ReferenceProfile",
    "Release",
    "ReleaseRef",
    "Role",
    "RoleEntry",
    "RotationError",
    "RotationVersionError",
    "RuntimeRequirements",
    "SampleMeta",
    "ShadowOrder",
    "ShadowWindow",
    "Signature",
    "SignatureError",
    "SigningKey",
    "State",
    "TelemetryBatch",
    "TelemetryWindow",
    "TensorSpec",
    "ThresholdNotMetError",
    "TopicError",
    "TrustRoot",
    "UniformSource",
    "UnsupportedSchemaError",
    "backoff_delay_s",
    "canonical_json",
    "device_topic",
    "histogram_quantile",
    "key_id_of",
    "pae",
    "parse_device_topic",
    "parse_json",
    "sign_envelope",
    "subscription_filter",
    "verify_device_id",
    "verify_document",
    "verify_initial_trust_root",
    "verify_not_expired",
    "verify_prefix",
    "verify_signatures",
    "verify_trust_root_rotation",
]
