"""Captured samples: devices upload them, operators order capture, anyone with a viewer's
token lists and downloads them (``controller.samples``).

``PUT /api/v1/device/samples/{sha256}`` takes a device's own token only (``ThisDevice``)
and a body of at most ``max_sample_bytes`` (``RequestLimits`` answers 413 before reading
a longer one; see ``controller.app``). Answers: 201 stored, 200 already stored, 400 not a
sample or not these bytes' hash, 403 another device's sample or one of a model whose
capture was never ordered for the device, 507 the device's quota is full. Every upload
is audited, as every mutating call is (the devices' per-hour budgets bound how many
there are), and so is every capture order.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import FileResponse
from sqlmodel import col, select

from ..devices.selectors import parse_selector
from ..errors import NotFoundError
from ..registry.schemas import MODEL_NAME_PATTERN
from ..samples.capture import active_captures, capture_devices, order_capture
from ..samples.schemas import (
    CaptureOrderCreate,
    CaptureOrderPublic,
    CapturePublic,
    SamplePublic,
    SamplesDeleted,
)
from ..samples.store import (
    SampleDeviceMismatchError,
    SampleNotOrderedError,
    SampleQuotaError,
    SampleStore,
    accept_sample,
    delete_samples,
)
from ..samples.tables import SampleRecord
from .deps import Audited, Context, DbSession, Operator, ThisDevice, Viewer

__all__ = ["SAMPLE_UPLOAD_PATH", "router"]

router = APIRouter(prefix="/api/v1", tags=["samples"])

SAMPLE_UPLOAD_PATH = r"/api/v1/device/samples/[0-9a-f]{64}"
Sha256 = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="The sample's SHA-256.")]
MAX_PAGE = 10_000


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _public(row: SampleRecord) -> SamplePublic:
    return SamplePublic(
        sha256=row.sha256,
        device_id=row.device_id,
        model=row.model_name,
        release_version=row.release_version,
        captured_at=_utc(row.captured_at),
        received_at=_utc(row.received_at),
        reason=row.reason,
        confidence=row.confidence,
        size_bytes=row.size_bytes,
        url=f"/api/v1/samples/{row.sha256}",
    )


async def _body(request: Request) -> bytes:
    return await request.body()


@router.put("/device/samples/{sha256}", status_code=status.HTTP_201_CREATED, dependencies=[Audited])
def put_device_sample(
    sha256: Sha256,
    request: Request,
    response: Response,
    data: Annotated[bytes, Depends(_body)],
    ctx: Context,
    session: DbSession,
    caller: ThisDevice,
) -> SamplePublic:
    """Store one sample the calling device captured (see the module's docstring)."""
    settings = ctx.settings
    if len(data) > settings.max_sample_bytes:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"a sample may be at most {settings.max_sample_bytes} bytes",
        )
    try:
        row, created = accept_sample(
            session,
            SampleStore(settings.samples_dir),
            token_id=caller.token_id,
            sha256=sha256,
            data=data,
            max_bytes=settings.max_sample_bytes,
            quota_bytes=settings.sample_quota_bytes_per_device,
            quota_count=settings.sample_quota_per_device,
        )
    except (SampleDeviceMismatchError, SampleNotOrderedError) as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=str(exc)) from exc
    except SampleQuotaError as exc:
        raise HTTPException(status.HTTP_507_INSUFFICIENT_STORAGE, detail=str(exc)) from exc
    request.state.audit = {
        "target": f"sample {sha256}",
        "device_id": row.device_id,
        "model": row.model_name,
        "size_bytes": row.size_bytes,
        "new": created,
    }
    if not created:
        response.status_code = status.HTTP_200_OK
    return _public(row)


@router.get("/samples")
def get_samples(
    session: DbSession,
    _caller: Viewer,
    model: Annotated[str | None, Query(pattern=MODEL_NAME_PATTERN)] = None,
    device: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[datetime | None, Query(description="Captured at or after.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1000,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> list[SamplePublic]:
    """Captured samples, oldest capture first."""
    query = select(SampleRecord)
    if model is not None:
        query = query.where(SampleRecord.model_name == model)
    if device is not None:
        query = query.where(SampleRecord.device_id == device)
    if since is not None:
        aware = since if since.tzinfo is not None else since.replace(tzinfo=UTC)
        query = query.where(col(SampleRecord.captured_at) >= aware)
    query = query.order_by(col(SampleRecord.captured_at), col(SampleRecord.sha256))
    rows = session.exec(query.offset(offset).limit(limit)).all()
    return [_public(row) for row in rows]


@router.get(
    "/samples/{sha256}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def get_sample(sha256: Sha256, ctx: Context, session: DbSession, _caller: Viewer) -> FileResponse:
    """One sample's bytes: an ``.npz`` (``tensors.samples``)."""
    if session.get(SampleRecord, sha256) is None:
        raise NotFoundError(f"no sample sha256:{sha256}")
    path = SampleStore(ctx.settings.samples_dir).path_for(sha256)
    if not path.exists():
        raise NotFoundError(f"sample sha256:{sha256} has no file")
    return FileResponse(path, media_type="application/octet-stream")


@router.delete("/samples", dependencies=[Audited])
def delete_samples_route(
    request: Request,
    ctx: Context,
    session: DbSession,
    _caller: Operator,
    model: Annotated[str, Query(pattern=MODEL_NAME_PATTERN)],
    before: Annotated[datetime | None, Query(description="Captured before.")] = None,
    device: Annotated[str | None, Query(max_length=64)] = None,
) -> SamplesDeleted:
    """Delete ``model``'s samples (those captured ``before``, of ``device``): rows and
    files, which frees the devices' quota here."""
    if before is not None and before.tzinfo is None:
        before = before.replace(tzinfo=UTC)
    count = delete_samples(
        session,
        SampleStore(ctx.settings.samples_dir),
        model=model,
        before=before,
        device_id=device,
    )
    request.state.audit = {
        "target": f"samples of {model}",
        "before": before.isoformat() if before else None,
        "device": device,
        "deleted": count,
    }
    return SamplesDeleted(deleted=count)


@router.get("/capture")
def get_capture(
    session: DbSession,
    _caller: Viewer,
    model: Annotated[str | None, Query(pattern=MODEL_NAME_PATTERN)] = None,
    device: Annotated[str | None, Query(max_length=64)] = None,
) -> list[CapturePublic]:
    """Where capture is on now: per device and model, until when and under which budget."""
    active = active_captures(session, now=datetime.now(UTC), model=model, device_id=device)
    return [CapturePublic(**vars(each)) for each in active]


@router.post("/capture", status_code=status.HTTP_201_CREATED, dependencies=[Audited])
def post_capture(
    body: CaptureOrderCreate,
    request: Request,
    ctx: Context,
    session: DbSession,
    caller: Operator,
) -> CaptureOrderPublic:
    """Turn capture of ``model`` on (or ``off``) on the devices the selector matches that
    run or are assigned it; a signed command goes to each."""
    now = datetime.now(UTC)
    devices = capture_devices(session, model=body.model, selector=parse_selector(body.selector))
    if not devices:
        raise NotFoundError(f"no enrolled device matching {body.selector!r} runs {body.model}")
    until = now + timedelta(seconds=body.for_s)
    order_capture(
        session,
        ctx.signer,
        devices,
        model=body.model,
        below_confidence=body.below_confidence,
        rare_input_share=body.rare_input_share,
        per_hour=body.per_hour,
        max_bytes=body.max_bytes,
        until=until,
        off=body.off,
        source=f"operator {caller.name}",
        now=now,
    )
    request.state.audit = {
        "target": f"capture of {body.model}",
        "off": body.off,
        "devices": devices[:100],
        "device_count": len(devices),
        "until": until.isoformat(),
        "below_confidence": body.below_confidence,
        "per_hour": body.per_hour,
        "max_bytes": body.max_bytes,
    }
    return CaptureOrderPublic(model=body.model, off=body.off, until=until, devices=devices)
