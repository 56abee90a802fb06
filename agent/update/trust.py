"""Trust checks of the agent: untrusted bytes and a ``TrustState`` in, verified objects out.

Pure: no I/O, no clock (``now`` is passed in), and the state passed in is never changed.
Each function either returns a verified value or raises a ``RefusalError`` leaf; the
caller then derives the next state (``TrustState.accept_deployment``, ...) and persists
it. A refusal therefore changes nothing, on disk or in memory (ARCHITECTURE.md §3).

A deployment is checked in this order, stopping at the first failure:

1. envelope shape and payload type;
2. the newer trust roots it carries (``trust_root``, ``trust_roots``), walked
   N -> N+1 -> ... by the rotation rules (§5.2);
3. its signatures, by the ``deployment`` role of the newest trusted root;
4. the device id;
5. its sequence above the highest accepted for its model (equal: a quiet duplicate);
6. its expiry, then the trust root's, against ``max(now, time floor)``;
7. the embedded release's signatures, by the ``release`` role (a removal has none);
8. the release is of the deployment's model;
9. no downgrade below the highest committed version unless ``rollback``;
10. the artifact file name (defence in depth beyond the schema).

A shadow order's candidate release goes through steps 7, 8 and 10 (never served, it is
never a downgrade).

The desired state that carries deployments is not signed (ADR 0003): ``read_desired_state``
only splits it into deployment envelopes, each verified here on its own.

Step 2 reads the ``trust_root`` field of a payload whose signature is not yet checked.
That is safe: a trust root carries its own authority (a threshold of the trusted root
keys) and a deployment that then fails step 3 leaves nothing adopted; it is needed
because the deployment may be signed by keys only the new root lists.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime
from typing import Any, TypeVar

import protocol
from protocol import Command, Deployment, DesiredState, Envelope, Release, TrustRoot

from ..errors import (
    DowngradeError,
    DuplicateCommandError,
    DuplicateDeploymentError,
    ExpiredCommandError,
    ExpiredDeploymentError,
    MalformedDocumentError,
    ModelMismatchError,
    ReplayedCommandError,
    ReplayedDeploymentError,
    TrustRootExpiredError,
    TrustRootRotationError,
    WrongDeviceError,
    WrongPayloadTypeError,
    translate_protocol_error,
)
from .names import verify_safe_file_name
from .trust_state import TrustState, VerifiedCommand, VerifiedDeployment

__all__ = [
    "MAX_TRUST_ROOT_STEPS",
    "adopt_trust_root",
    "adopt_trust_roots",
    "read_desired_state",
    "verify_command",
    "verify_deployment",
]

# Like python-tuf's max_root_rotations: a bound on work an attacker can make us do.
MAX_TRUST_ROOT_STEPS = 32

Order = TypeVar("Order", Deployment, Command)
Signed = TypeVar("Signed", Deployment, Command, Release)


def read_desired_state(payload: bytes, *, device_id: str) -> list[bytes]:
    """The deployment envelopes in a desired state for ``device_id``, not yet verified."""
    try:
        desired = DesiredState.from_payload(payload)
    except protocol.ProtocolError as exc:
        raise translate_protocol_error(exc, what="desired state") from exc
    if desired.device_id != device_id:
        raise WrongDeviceError(f"desired state is for {desired.device_id!r}, not {device_id!r}")
    return [protocol.canonical_json(entry) for entry in desired.deployments]


def verify_deployment(
    envelope_bytes: bytes,
    state: TrustState,
    *,
    device_id: str,
    now: datetime,
    accepted: bool = False,
) -> VerifiedDeployment:
    """Verify a deployment for ``device_id`` as received; see the module for the order.

    ``accepted``: verify again one this device accepted before (a shadow order kept on
    disk, at start): its sequence must still be its model's mark, the newest accepted,
    and its expiry is not checked (it was accepted in time).
    """
    effective = state.effective_time(now)
    deployment, root_envelope, root = _verify_order(
        envelope_bytes, Deployment, state, device_id=device_id
    )
    what = f"deployment {deployment.sequence} of {deployment.model}"
    mark = state.deployment_sequence(deployment.model)
    if accepted:
        if deployment.sequence != mark:
            raise ReplayedDeploymentError(f"{what} is no longer the newest accepted ({mark})")
    elif deployment.sequence <= mark:
        if deployment.sequence == mark:
            raise DuplicateDeploymentError(f"{what} was already accepted")
        raise ReplayedDeploymentError(f"{what} is below the highest accepted, {mark}")
    elif effective >= deployment.expires:
        raise ExpiredDeploymentError(
            f"{what} expired at {deployment.expires.isoformat()} "
            f"(effective time {effective.isoformat()})"
        )
    _verify_trust_root_fresh(root, effective)
    shadow = deployment.shadow
    if shadow is not None and shadow.release is not None:
        # Never served, so never a downgrade: only whose it is and what it names.
        candidate = _verify_release(
            shadow.release, deployment.model, root, what=f"shadow in {what}"
        )
        return VerifiedDeployment(deployment, None, effective, root, root_envelope, candidate)
    if deployment.release is None:
        return VerifiedDeployment(deployment, None, effective, root, root_envelope)
    release = _verify_release(deployment.release, deployment.model, root, what=what)
    highest = state.committed_version(release.model)
    if release.version < highest and not deployment.rollback:
        raise DowngradeError(
            f"{what}: {release.model} v{release.version} is below committed v{highest} "
            "and the deployment does not say rollback"
        )
    return VerifiedDeployment(deployment, release, effective, root, root_envelope)


def _verify_release(source: dict[str, Any], model: str, root: TrustRoot, *, what: str) -> Release:
    """Steps 7, 8 and 10 for a release carried in an order about ``model``."""
    release = _shared_release(_verify_signed(source, Release, root, what=f"release in {what}"))
    if release.model != model:
        raise ModelMismatchError(f"{what} carries a release of {release.model}")
    verify_safe_file_name(release.artifact.filename)
    return release


def verify_command(
    envelope_bytes: bytes, state: TrustState, *, device_id: str, now: datetime
) -> VerifiedCommand:
    """Verify a command for ``device_id``: as a deployment, in its own sequence space."""
    effective = state.effective_time(now)
    command, root_envelope, root = _verify_order(
        envelope_bytes, Command, state, device_id=device_id
    )
    what = f"command {command.sequence}"
    if command.sequence <= state.command_sequence:
        if command.sequence == state.command_sequence:
            raise DuplicateCommandError(f"{what} was already accepted")
        raise ReplayedCommandError(
            f"{what} is below the highest accepted, {state.command_sequence}"
        )
    if effective >= command.expires:
        raise ExpiredCommandError(f"{what} expired at {command.expires.isoformat()}")
    _verify_trust_root_fresh(root, effective)
    return VerifiedCommand(command, effective, root, root_envelope)


def adopt_trust_roots(
    state: TrustState,
    envelopes: Iterable[Envelope | bytes],
    *,
    now: datetime,
    max_steps: int = MAX_TRUST_ROOT_STEPS,
) -> TrustState:
    """``state`` trusting the newest root reachable through ``envelopes``, in order.

    Roots not newer than the trusted one are skipped. Each newer one must be exactly the
    next version and pass the rotation rules; only the last root reached must be
    unexpired (§5.2). All or nothing: any failure raises and nothing is adopted, so the
    caller persists once, after the walk; a retry walks again from the persisted root.
    """
    root_envelope, root = _walk(state, envelopes, max_steps=max_steps)
    if root.version == state.trust_root_version:
        return state
    _verify_trust_root_fresh(root, state.effective_time(now))
    return state.with_verified_trust_root(root_envelope, root)


def adopt_trust_root(state: TrustState, envelope: Envelope | bytes, *, now: datetime) -> TrustState:
    """``adopt_trust_roots`` for one root, e.g. from ``trust-roots/N.json``."""
    return adopt_trust_roots(state, [envelope], now=now)


def _verify_order(
    envelope_bytes: bytes, order_type: type[Order], state: TrustState, *, device_id: str
) -> tuple[Order, Envelope, TrustRoot]:
    """Steps 1-4: parse, walk the carried trust root, check signatures and device id."""
    what = order_type.__name__.lower()
    envelope = _parse_envelope(envelope_bytes, what=what)
    if envelope.payload_type != order_type.PAYLOAD_TYPE:
        raise WrongPayloadTypeError(
            f"expected a {what} ({order_type.PAYLOAD_TYPE}), got {envelope.payload_type!r}"
        )
    root_envelope, root = _walk(state, _carried_trust_roots(envelope, what=what))
    order = _verify_signed(envelope, order_type, root, what=what)
    if order.device_id != device_id:
        raise WrongDeviceError(
            f"{what} {order.sequence} is for device {order.device_id!r}, not {device_id!r}"
        )
    return order, root_envelope, root


def _walk(
    state: TrustState,
    envelopes: Iterable[Envelope | bytes],
    *,
    max_steps: int = MAX_TRUST_ROOT_STEPS,
) -> tuple[Envelope, TrustRoot]:
    root_envelope, root = state.trust_root_envelope, state.trust_root
    steps = 0
    for candidate in envelopes:
        try:
            envelope = (
                candidate if isinstance(candidate, Envelope) else Envelope.from_bytes(candidate)
            )
            claimed = TrustRoot.from_unverified_envelope(envelope)
        except protocol.ProtocolError as exc:
            raise TrustRootRotationError(f"unreadable trust root: {exc}") from exc
        if claimed.version <= root.version:
            continue  # already trusted, or older: nothing to adopt, nothing to refuse
        steps += 1
        if steps > max_steps:
            raise TrustRootRotationError(f"more than {max_steps} trust root rotations at once")
        try:
            root = protocol.verify_trust_root_rotation(root, envelope)
        except protocol.ProtocolError as exc:
            raise TrustRootRotationError(
                f"trust root v{claimed.version} may not follow v{root.version}: {exc}"
            ) from exc
        root_envelope = envelope
    return root_envelope, root


def _carried_trust_roots(envelope: Envelope, *, what: str) -> list[Envelope]:
    """The trust roots an order carries (``trust_root``, then ``trust_roots``), sorted by
    the version they claim: the walk takes them N+1, N+2, ... and skips older ones."""
    # Only these fields, read from JSON: the rest of the payload waits for step 3.
    try:
        obj = protocol.parse_json(envelope.payload)
    except (ValueError, protocol.ProtocolError) as exc:  # JSONDecodeError, too deep, bad UTF-8
        raise MalformedDocumentError(f"{what} payload is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise MalformedDocumentError(f"{what} payload is not a JSON object")
    single, several = obj.get("trust_root"), obj.get("trust_roots", [])
    if not isinstance(several, list) or len(several) > protocol.MAX_CARRIED_TRUST_ROOTS:
        raise TrustRootRotationError(
            f"{what} carries 'trust_roots' that is not a list of at most "
            f"{protocol.MAX_CARRIED_TRUST_ROOTS} trust roots"
        )
    carried = ([] if single is None else [single]) + several
    try:
        envelopes = [Envelope.from_json_obj(item) for item in carried]
        versions = [TrustRoot.from_unverified_envelope(item).version for item in envelopes]
    except protocol.ProtocolError as exc:
        raise TrustRootRotationError(f"{what} carries an unreadable trust root: {exc}") from exc
    return [item for _, item in sorted(zip(versions, envelopes, strict=True), key=lambda p: p[0])]


def _verify_signed(
    source: Envelope | dict[str, Any], document_type: type[Signed], root: TrustRoot, *, what: str
) -> Signed:
    # ``source`` may be an envelope carried as a JSON object inside another document.
    try:
        envelope = source if isinstance(source, Envelope) else Envelope.from_json_obj(source)
        return protocol.verify_document(envelope, document_type, root)
    except protocol.ProtocolError as exc:
        raise translate_protocol_error(exc, what=what) from exc


# Releases are immutable, and every device of a fleet receives the same few. A verified
# release equal to one verified before is replaced by that one, so a process running
# thousands of agents (the simulator) keeps one copy of its golden cases and reference
# profile instead of thousands. Verification itself still runs for every envelope.
MAX_SHARED_RELEASES = 16
_shared_releases: OrderedDict[str, Release] = OrderedDict()


def _shared_release(release: Release) -> Release:
    key = release.artifact.sha256 + ":" + release.model + ":" + str(release.version)
    known = _shared_releases.get(key)
    if known is not None and known == release:
        _shared_releases.move_to_end(key)
        return known
    _shared_releases[key] = release
    while len(_shared_releases) > MAX_SHARED_RELEASES:
        _shared_releases.popitem(last=False)
    return release


def _verify_trust_root_fresh(root: TrustRoot, effective: datetime) -> None:
    if effective >= root.expires:
        raise TrustRootExpiredError(
            f"trust root v{root.version} expired at {root.expires.isoformat()} "
            f"(effective time {effective.isoformat()})"
        )


def _parse_envelope(envelope_bytes: bytes, *, what: str) -> Envelope:
    try:
        return Envelope.from_bytes(envelope_bytes)
    except protocol.ProtocolError as exc:
        raise translate_protocol_error(exc, what=what) from exc
