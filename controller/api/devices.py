"""Devices: enrollment tokens, enrollment, and the fleet's devices.

``POST /api/v1/enroll`` is the one route without a bearer token that changes anything:
the one-time enrollment token in its body authenticates it, and it writes its own audit
entry (actor ``enrollment:<token id>``) since there is no principal for ``Audited``. A
refused token answers 403 with one message whatever was wrong with it. ``GET
/api/v1/ca.pem`` is open too: a CA certificate is public.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from fastapi.responses import PlainTextResponse
from sqlalchemy import event
from sqlmodel import Session

from protocol import DEVICE_ID_PATTERN

from ..audit import append_audit
from ..devices.desired import remove_model
from ..devices.enrollment import (
    create_enrollment_token,
    decommission_device,
    enroll_device,
    renew_device_certificate,
)
from ..devices.inventory import (
    DeviceView,
    ModelView,
    fleet_releases,
    get_device_detail,
    get_device_summary,
    list_devices,
    update_labels,
)
from ..devices.schemas import (
    AssignmentPublic,
    CertificatePublic,
    CertificateRequest,
    DesiredPublic,
    DeviceDetail,
    DeviceEventPublic,
    DeviceModelPublic,
    DevicePublic,
    EnrollmentPublic,
    EnrollmentTokenCreate,
    EnrollmentTokenPublic,
    EnrollRequest,
    FleetReleasePublic,
    LabelsUpdate,
    TelemetryWindowPublic,
)
from ..devices.selectors import parse_selector
from ..devices.tables import DeviceCertificate
from ..errors import EnrollmentRefusedError
from ..registry.schemas import MODEL_NAME_PATTERN
from ..tables import utcnow
from ..tokens import Principal, Role
from .deps import Audited, Context, DbSession, Operator, ThisDevice, Viewer

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["devices"])

DeviceId = Annotated[str, Path(pattern=DEVICE_ID_PATTERN, description="The device's id.")]
ModelName = Annotated[str, Path(pattern=MODEL_NAME_PATTERN, description="The model's name.")]
MAX_PAGE = 1000


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes (stored as UTC); answer with one spelling.
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _model_public(view: ModelView) -> DeviceModelPublic:
    row = view.row
    return DeviceModelPublic(
        model=row.model_name,
        phase=row.phase,
        active_version=row.active_version,
        active_sha256=row.active_sha256,
        previous_version=row.previous_version,
        last_good_version=row.last_good_version,
        reported_sequence=row.reported_sequence,
        desired_version=view.desired_version,
        desired_remove=row.desired_remove,
        desired_rollback=row.desired_rollback,
        desired_sequence=row.desired_sequence if row.desired_envelope is not None else None,
        desired_expires_at=_utc(row.desired_expires_at),
        desired_rollout_id=row.desired_rollout_id,
    )


def _summary_fields(view: DeviceView) -> dict[str, Any]:
    device = view.device
    reported = device.reported_state or {}
    return {
        "id": device.id,
        "labels": device.labels,
        "online": device.online,
        "last_seen_at": _utc(device.last_seen_at),
        "phase": device.phase,
        "agent_version": device.agent_version,
        "models": [_model_public(model) for model in view.models],
        "enrolled_at": _utc(device.enrolled_at),
        "decommissioned_at": _utc(device.decommissioned_at),
        "trust_root_version": reported.get("trust_root_version"),
        "trust_root_expires_at": reported.get("trust_root_expires_at"),
    }


@router.post("/enrollment-tokens", status_code=status.HTTP_201_CREATED, dependencies=[Audited])
def post_enrollment_token(
    body: EnrollmentTokenCreate,
    request: Request,
    ctx: Context,
    session: DbSession,
    caller: Operator,
) -> EnrollmentTokenPublic:
    """A one-time token a device trades for its identity (shown once, stored hashed)."""
    ttl_s = body.ttl_s if body.ttl_s is not None else ctx.settings.enrollment_token_ttl_s
    token, row = create_enrollment_token(
        session,
        labels=body.labels,
        device_id=body.device_id,
        ttl_s=ttl_s,
        actor=f"{caller.name} ({caller.token_id})",
        settings=ctx.settings,
    )
    request.state.audit = {
        "target": f"enrollment token {row.id}",
        "labels": row.labels,
        "device_id": row.device_id,
        "ttl_s": ttl_s,
    }
    expires_at = _utc(row.expires_at)
    assert expires_at is not None
    return EnrollmentTokenPublic(
        token=token,
        id=row.id,
        expires_at=expires_at,
        labels=row.labels,
        device_id=row.device_id,
        controller_url=ctx.settings.device_controller_url,
        trust_root_sha256=hashlib.sha256(ctx.signer.trust_root_envelope.to_bytes()).hexdigest(),
        ca_sha256=ctx.authority.sha256 if ctx.authority is not None else None,
    )


@router.post(
    "/enroll",
    status_code=status.HTTP_201_CREATED,
    responses={403: {"description": "The enrollment token is unknown, expired or used."}},
)
def post_enroll(body: EnrollRequest, ctx: Context, session: DbSession) -> EnrollmentPublic:
    """Trade a one-time enrollment token for the device's identity and credentials."""
    try:
        enrollment = enroll_device(
            session,
            token=body.token,
            device_id=body.device_id,
            settings=ctx.settings,
            trust_root_envelope=ctx.signer.trust_root_envelope,
            csr=body.csr,
            authority=ctx.authority,
        )
    except EnrollmentRefusedError as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=str(exc)) from exc
    actor = Principal(
        token_id=f"enrollment:{enrollment.token_id}",
        name=f"device {enrollment.device_id}",
        role=Role.DEVICE,
    )
    _append_audit_at_commit(
        session,
        actor,
        action="POST /api/v1/enroll",
        target=f"device {enrollment.device_id}",
        details={
            "labels": enrollment.labels,
            "reenrolled": enrollment.reenrolled,
            "certificate": enrollment.client_certificate is not None,
        },
    )
    return EnrollmentPublic.model_validate(enrollment.public_fields())


def _append_audit_at_commit(
    session: Session, actor: Principal, *, action: str, target: str, details: dict[str, Any]
) -> None:
    """Append the audit entry in the session's commit, just before COMMIT, still in its
    transaction.

    Appending locks the audit chain's head row until the commit, and every mutating
    request of every controller waits for that lock. Appended in the route, the lock
    was held while the request went back to the event loop and waited for a thread to
    commit in, which under load was most of an enrollment's time (enrollments ran one at
    a time, at ~40/s). Here it is held for the append's statements and the COMMIT only.
    """

    def append(committing: Session) -> None:
        append_audit(committing, actor, action=action, target=target, details=details)

    event.listen(session, "before_commit", append, once=True)


@router.get(
    "/ca.pem",
    response_class=PlainTextResponse,
    responses={404: {"description": "This controller runs without TLS."}},
)
def get_ca_certificate(ctx: Context) -> str:
    """The CA certificate (PEM), open to anyone: a device fetches it before it enrolls
    and trusts it only if its SHA-256 is the ``--ca-sha256`` it was given."""
    if ctx.authority is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="this controller has no CA")
    return ctx.authority.pem


@router.post(
    "/device/certificate",
    dependencies=[Audited],
    responses={404: {"description": "No CA here, or the token is no enrolled device's."}},
)
def post_device_certificate(
    body: CertificateRequest, request: Request, ctx: Context, session: DbSession, caller: ThisDevice
) -> CertificatePublic:
    """Renew the calling device's client certificate from its CSR; its older ones are
    revoked. The agent asks a month before its certificate expires."""
    if ctx.authority is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="this controller has no CA")
    device_id, issued = renew_device_certificate(
        session, token_id=caller.token_id, csr=body.csr, authority=ctx.authority
    )
    request.state.audit = {
        "target": f"device {device_id}",
        "serial": issued.serial,
        "expires_at": issued.not_after.isoformat(),
    }
    return CertificatePublic(
        device_id=device_id,
        certificate=issued.pem,
        ca_certificate=ctx.authority.pem,
        expires_at=issued.not_after,
    )


@router.get("/devices")
def get_devices(
    session: DbSession,
    _caller: Viewer,
    selector: Annotated[str, Query(max_length=4096, description="e.g. site=berlin")] = "",
    online: bool | None = None,
    model: Annotated[str | None, Query(max_length=128)] = None,
    version: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
    include_decommissioned: bool = False,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> list[DevicePublic]:
    """Devices by id; ``model``/``version`` match what devices report running."""
    views = list_devices(
        session,
        selector=parse_selector(selector),
        online=online,
        model=model,
        version=version,
        include_decommissioned=include_decommissioned,
        limit=limit,
        offset=offset,
    )
    return [DevicePublic.model_validate(_summary_fields(view)) for view in views]


@router.get("/devices/{device_id}")
def get_device(device_id: DeviceId, session: DbSession, _caller: Viewer) -> DeviceDetail:
    """One device: reported and desired state, deployment history, recent statistics."""
    detail = get_device_detail(session, device_id=device_id)
    device = detail.summary.device
    desired = DesiredPublic(
        sequence=device.desired_sequence, published_sequence=device.published_sequence
    )
    assignments = [
        AssignmentPublic.model_validate(
            {**view.assignment.model_dump(), "model": view.model, "version": view.version}
        )
        for view in detail.assignments
    ]
    events = [
        DeviceEventPublic.model_validate(
            {**event.model_dump(), "at": _utc(event.at), "received_at": _utc(event.received_at)}
        )
        for event in detail.events
    ]
    telemetry = [
        TelemetryWindowPublic.model_validate(
            {**window, "window_start": _utc(window["window_start"])}
        )
        for window in detail.telemetry
    ]
    return DeviceDetail.model_validate(
        {
            **_summary_fields(detail.summary),
            "reported_state": device.reported_state,
            "desired": desired,
            "assignments": assignments,
            "events": events,
            "telemetry": telemetry,
            "certificate": _certificate_fields(detail.certificate),
        }
    )


def _certificate_fields(certificate: DeviceCertificate | None) -> dict[str, Any] | None:
    if certificate is None:
        return None
    return {
        "serial": certificate.serial,
        "sha256": certificate.sha256,
        "issued_at": _utc(certificate.issued_at),
        "expires_at": _utc(certificate.expires_at),
    }


@router.patch("/devices/{device_id}/labels", dependencies=[Audited])
def patch_device_labels(
    device_id: DeviceId,
    body: LabelsUpdate,
    request: Request,
    session: DbSession,
    _caller: Operator,
) -> DevicePublic:
    """Set and remove labels of one device."""
    view = update_labels(
        session,
        device_id=device_id,
        set_labels=body.labels_to_set,
        remove=body.labels_to_remove,
    )
    request.state.audit = {
        "target": f"device {device_id}",
        "set": body.labels_to_set,
        "remove": body.labels_to_remove,
    }
    return DevicePublic.model_validate(_summary_fields(view))


@router.post(
    "/devices/{device_id}/models/{model}/remove",
    dependencies=[Audited],
    responses={409: {"description": "Decommissioned, or a rollout of the model is under way."}},
)
def post_remove_model(
    device_id: DeviceId,
    model: ModelName,
    request: Request,
    ctx: Context,
    session: DbSession,
    _caller: Operator,
) -> DevicePublic:
    """Order the device to stop serving a model and delete its files (a signed removal)."""
    sequence = remove_model(
        session,
        device_id=device_id,
        model=model,
        signer=ctx.signer,
        now=utcnow(),
        ttl_s=ctx.settings.deployment_ttl_s,
    )
    request.state.audit = {
        "target": f"device {device_id}",
        "model": model,
        "deployment_sequence": sequence,
    }
    session.flush()
    return DevicePublic.model_validate(
        _summary_fields(get_device_summary(session, device_id=device_id))
    )


@router.delete("/devices/{device_id}", dependencies=[Audited])
def delete_device(
    device_id: DeviceId, request: Request, session: DbSession, _caller: Operator
) -> DevicePublic:
    """Decommission a device: hide it, revoke its API token (idempotent)."""
    decommission_device(session, device_id=device_id)
    request.state.audit = {"target": f"device {device_id}"}
    view = get_device_summary(session, device_id=device_id)
    return DevicePublic.model_validate(_summary_fields(view))


@router.get("/fleet/releases")
def get_fleet_releases(session: DbSession, _caller: Viewer) -> list[FleetReleasePublic]:
    """Which model versions run where: devices and online devices per reported version."""
    return [
        FleetReleasePublic(
            model=row.model, version=row.version, devices=row.devices, online=row.online
        )
        for row in fleet_releases(session)
    ]
