"""Enrollment on the device: trade a one-time token for an identity, check it, write it.

Three steps, as python-tuf separates them: ``download_enrollment`` asks the controller
(network), ``verify_enrollment`` checks the answer (pure: untrusted JSON in, a verified
``EnrolledDevice`` out, or a ``RefusalError``), ``persist_enrollment`` writes the files.

Invariants:
- nothing is written unless the whole answer verified, its trust root included
  (``protocol.verify_initial_trust_root``); a refused answer leaves the directory as it was;
- an existing ``agent.toml`` is never replaced without ``force``, and that is checked
  before the token is spent;
- ``agent.toml`` holds the MQTT password and the API token: it is created mode 0600 in a
  temp file, fsync'd, then renamed over the old one, so a reader sees the old file or the
  new one, never a partial one. ``trust-root.json`` is written first; ``agent.toml`` last,
  so a present ``agent.toml`` means a complete enrollment;
- the answer is read up to ``MAX_ENROLLMENT_ANSWER_BYTES``; secrets are never logged;
- a trust root that verifies against itself proves only its integrity: anyone answering
  the enrollment can make one. With a ``TrustRootPin`` (the SHA-256 that
  ``edgefleet devices enroll`` prints, or a trust root provisioned on the device) any
  other trust root is refused;
- the device makes its TLS key here and sends only a CSR (``device_identity``); a
  certificate in the answer is kept only if it is for that key and device, from the CA
  (the pinned one, with a ``CaPin``). The key is written mode 0600 under ``tls/`` with
  the certificate and the CA, before ``agent.toml``, which then names them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import ssl
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from durable import PRIVATE_FILE_MODE, PUBLIC_FILE_MODE, write_atomic
from protocol import (
    Envelope,
    ProtocolError,
    TrustRoot,
    verify_initial_trust_root,
    verify_trust_root_rotation,
)

from ..config import AgentConfig
from ..errors import (
    AgentConfigExistsError,
    ConnectionFailedError,
    EnrollmentAnswerError,
    EnrollmentRefusedError,
    HttpStatusError,
    LocalStateError,
    TrustRootMismatchError,
    translate_protocol_error,
)
from ..tls import default_tls_context
from .capped_http import capped_request
from .device_identity import (
    CaPin,
    DeviceKey,
    ca_context,
    fetch_pinned_ca,
    verify_issued_certificate,
)

__all__ = [
    "AGENT_CONFIG_FILE",
    "MAX_ENROLLMENT_ANSWER_BYTES",
    "TRUST_ROOT_FILE",
    "AgentConfigExistsError",
    "CaPin",
    "EnrolledDevice",
    "EnrollmentAnswerError",
    "EnrollmentRefusedError",
    "TrustRootMismatchError",
    "TrustRootPin",
    "download_enrollment",
    "enroll",
    "persist_enrollment",
    "verify_enrollment",
]

logger = logging.getLogger(__name__)

AGENT_CONFIG_FILE = "agent.toml"
TRUST_ROOT_FILE = "trust-root.json"
TLS_KEY_FILE = "tls/device.key"
TLS_CERT_FILE = "tls/device.crt"
TLS_CA_FILE = "tls/ca.crt"
AGENT_STATE_DIR = "data"
ENROLL_PATH = "/api/v1/enroll"
MAX_ENROLLMENT_ANSWER_BYTES = 1024 * 1024
ENROLL_TIMEOUT_S = 30.0
_ANSWER_FIELDS = (
    "device_id",
    "mqtt_username",
    "mqtt_password",
    "broker_url",
    "topic_prefix",
    "controller_url",
    "controller_token",
)


@dataclass(frozen=True)
class TrustRootPin:
    """What the device knows of its controller's trust root before it asks, out of band.

    ``sha256``: of the trust root file, as ``edgefleet devices enroll`` prints it.
    ``provisioned``: a trust root installed on the device; the answer's must be the same
    document or its next version, signed by its root keys (a rotation since).
    """

    sha256: str | None = None
    provisioned: Envelope | None = None

    def verify(self, envelope: Envelope) -> None:
        """Raise ``TrustRootMismatchError`` unless ``envelope`` is the expected trust root."""
        if self.sha256 is not None:
            served = hashlib.sha256(envelope.to_bytes()).hexdigest()
            if served != self.sha256.lower():
                raise TrustRootMismatchError(
                    f"the controller's trust root has SHA-256 {served}, not the expected "
                    f"{self.sha256.lower()}: refusing it (is this the right controller?)"
                )
        if self.provisioned is not None and envelope.payload != self.provisioned.payload:
            try:
                verify_trust_root_rotation(verify_initial_trust_root(self.provisioned), envelope)
            except ProtocolError as exc:
                raise TrustRootMismatchError(
                    "the controller's trust root is neither the provisioned one nor its next "
                    f"version: {exc}"
                ) from exc


@dataclass(frozen=True)
class EnrolledDevice:
    """A verified enrollment: what ``agent.toml`` and ``trust-root.json`` will hold."""

    # Holds the MQTT password and the API token: kept out of repr, so out of logs.
    settings: dict[str, str] = field(repr=False)
    labels: dict[str, str]
    trust_root_envelope: Envelope = field(repr=False)
    trust_root: TrustRoot
    # Files under the data directory (TLS_*_FILE -> bytes); the key among them.
    tls_files: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def device_id(self) -> str:
        return self.settings["device_id"]


def download_enrollment(
    controller_url: str,
    token: str,
    *,
    device_id: str | None = None,
    csr: str | None = None,
    tls_context: ssl.SSLContext | None = None,
    timeout_s: float = ENROLL_TIMEOUT_S,
) -> Any:
    """POST the token (and the CSR) to the controller; return its decoded JSON answer.

    ``tls_context``: what an ``https`` controller must prove (the pinned CA); None: the
    system's CAs.

    Raises ``EnrollmentRefusedError`` for a 4xx answer, ``HttpStatusError`` for a 5xx one,
    ``ConnectionFailedError``/``TransportTimeoutError`` when the controller is unreachable.
    """
    url = controller_url.rstrip("/") + ENROLL_PATH
    body: dict[str, str] = {"token": token}
    if device_id is not None:
        body["device_id"] = device_id
    if csr is not None:
        body["csr"] = csr
    try:
        status, content = capped_request(
            "POST",
            url,
            verify=tls_context or default_tls_context(),
            max_bytes=MAX_ENROLLMENT_ANSWER_BYTES,
            timeout_s=timeout_s,
            too_large=EnrollmentAnswerError,
            json=body,
        )
    except ConnectionFailedError as exc:
        if "CERTIFICATE_VERIFY_FAILED" not in str(exc) or tls_context is not None:
            raise
        hint = " (a controller with its own CA: pass --ca-sha256 or --ca-file)"
        raise ConnectionFailedError(f"{exc}{hint}") from exc
    if status >= 400:
        detail = _detail(content)
        if status >= 500:
            raise HttpStatusError(f"the controller failed ({status}): {detail}", status=status)
        raise EnrollmentRefusedError(f"the controller refused the enrollment ({status}): {detail}")
    try:
        return json.loads(content)
    except ValueError as exc:
        raise EnrollmentAnswerError(f"the controller's answer is not JSON: {exc}") from exc


def _detail(content: bytes) -> str:
    try:
        answer = json.loads(content)
    except ValueError:
        return content[:500].decode("utf-8", "replace")
    if isinstance(answer, dict) and "detail" in answer:
        return str(answer["detail"])
    return content[:500].decode("utf-8", "replace")


def verify_enrollment(
    answer: Any,
    pin: TrustRootPin | None = None,
    *,
    key: DeviceKey | None = None,
    pinned_ca_pem: bytes | None = None,
) -> EnrolledDevice:
    """Check an untrusted enrollment answer; raise ``EnrollmentAnswerError`` (or the
    ``RefusalError`` of the trust root) unless every field is usable, the trust root is
    the one ``pin`` expects, and a certificate in it is for ``key`` from the CA
    (``pinned_ca_pem`` when given)."""
    if not isinstance(answer, dict):
        raise EnrollmentAnswerError("the enrollment answer is not a JSON object")
    missing = [name for name in _ANSWER_FIELDS if not isinstance(answer.get(name), str)]
    if not isinstance(answer.get("trust_root"), dict):
        missing.append("trust_root")
    if missing:
        raise EnrollmentAnswerError(f"the enrollment answer lacks {', '.join(missing)}")
    labels = answer.get("labels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise EnrollmentAnswerError("the enrollment answer's labels are not text")
    try:
        envelope = Envelope.from_json_obj(answer["trust_root"])
        trust_root = verify_initial_trust_root(envelope)
    except ProtocolError as exc:
        raise translate_protocol_error(exc, what="the controller's trust root") from exc
    if pin is not None:
        pin.verify(envelope)
    settings = {name: answer[name] for name in _ANSWER_FIELDS}
    tls_files: dict[str, bytes] = {}
    if key is not None and answer.get("client_certificate") is not None:
        identity = verify_issued_certificate(
            key=key,
            device_id=settings["device_id"],
            certificate_pem=answer["client_certificate"],
            ca_pem=answer.get("ca_certificate"),
            pinned_ca_pem=pinned_ca_pem,
        )
        tls_files = {
            TLS_KEY_FILE: identity.private_key_pem,
            TLS_CERT_FILE: identity.certificate_pem,
            TLS_CA_FILE: identity.ca_pem,
        }
        settings |= {"tls_cert_file": TLS_CERT_FILE, "tls_key_file": TLS_KEY_FILE}
    elif pinned_ca_pem is not None:
        tls_files = {TLS_CA_FILE: pinned_ca_pem}
    if TLS_CA_FILE in tls_files:
        settings["tls_ca_file"] = TLS_CA_FILE
    try:
        # Every value must be one AgentConfig accepts (device id pattern, broker URL…).
        AgentConfig.model_validate(
            {**settings, "data_dir": AGENT_STATE_DIR, "trust_root": TRUST_ROOT_FILE}
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise EnrollmentAnswerError(f"the enrollment answer is not usable: {problems}") from exc
    return EnrolledDevice(
        settings=settings,
        labels=dict(labels),
        trust_root_envelope=envelope,
        trust_root=trust_root,
        tls_files=tls_files,
    )


def _toml_string(value: str) -> str:
    # A JSON string without ASCII escaping is a TOML basic string (same escapes).
    return json.dumps(value, ensure_ascii=False)


def render_agent_config(device: EnrolledDevice) -> str:
    """The text of ``agent.toml``: paths relative to the file, then the identity."""
    lines = [
        "# Written by `edgefleet-agent enroll`. Holds secrets: keep it mode 0600.",
        f"data_dir = {_toml_string(AGENT_STATE_DIR)}",
        f"trust_root = {_toml_string(TRUST_ROOT_FILE)}",
    ]
    lines += [f"{name} = {_toml_string(value)}" for name, value in device.settings.items()]
    text = "\n".join(lines) + "\n"
    parsed = tomllib.loads(text)
    if any(parsed.get(name) != value for name, value in device.settings.items()):
        raise EnrollmentAnswerError("the enrollment answer cannot be written as TOML")
    return text


def persist_enrollment(data_dir: Path, device: EnrolledDevice, *, force: bool) -> Path:
    """Write ``trust-root.json``, the TLS files (the key 0600), then ``agent.toml`` (0600)
    into ``data_dir``; return the path of ``agent.toml``. Refuses to replace it unless
    ``force``."""
    config_path = data_dir / AGENT_CONFIG_FILE
    _refuse_existing(config_path, force=force)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(
            data_dir / TRUST_ROOT_FILE,
            device.trust_root_envelope.to_bytes(),
            mode=PUBLIC_FILE_MODE,
        )
        for name, content in device.tls_files.items():
            path = data_dir / name
            path.parent.mkdir(mode=0o700, exist_ok=True)
            mode = PRIVATE_FILE_MODE if name == TLS_KEY_FILE else PUBLIC_FILE_MODE
            write_atomic(path, content, mode=mode)
        write_atomic(config_path, render_agent_config(device).encode("utf-8"))
    except OSError as exc:
        raise LocalStateError(f"cannot write the enrollment into {data_dir}: {exc}") from exc
    return config_path


def enroll(
    controller_url: str,
    token: str,
    data_dir: Path,
    *,
    device_id: str | None = None,
    force: bool = False,
    pin: TrustRootPin | None = None,
    ca_pin: CaPin | None = None,
    timeout_s: float = ENROLL_TIMEOUT_S,
) -> tuple[EnrolledDevice, Path]:
    """Enroll this device: check ``data_dir``, make a key, ask, verify, write. Returns the
    verified enrollment and the path of ``agent.toml``."""
    _refuse_existing(data_dir / AGENT_CONFIG_FILE, force=force)
    pinned_ca_pem = None
    tls_context = None
    if ca_pin is not None:
        pinned_ca_pem = fetch_pinned_ca(controller_url, ca_pin, timeout_s=timeout_s)
        tls_context = ca_context(pinned_ca_pem)
    key = DeviceKey.generate(device_id or "edgefleet-device")
    answer = download_enrollment(
        controller_url,
        token,
        device_id=device_id,
        csr=key.csr_pem,
        tls_context=tls_context,
        timeout_s=timeout_s,
    )
    device = verify_enrollment(answer, pin, key=key, pinned_ca_pem=pinned_ca_pem)
    config_path = persist_enrollment(data_dir, device, force=force)
    logger.info("enrolled as %s; wrote %s", device.device_id, config_path)
    return device, config_path


def _refuse_existing(config_path: Path, *, force: bool) -> None:
    if config_path.exists() and not force:
        raise AgentConfigExistsError(
            f"{config_path} exists: this device is enrolled already (pass --force to replace it)"
        )
