"""Signed releases."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response, status

from protocol import Envelope, ProtocolError

from ..errors import BadRequestError
from ..registry.releases import (
    envelope_of,
    get_release,
    list_releases,
    prepare_release,
    record_signed_release,
    release_version,
)
from ..registry.schemas import ReleasePublic
from ..registry.tables import ReleaseRecord
from .deps import Audited, Context, DbSession, Operator, Viewer
from .models import ModelName, VersionNumber

router = APIRouter(prefix="/api/v1", tags=["releases"])


def _public(record: ReleaseRecord) -> ReleasePublic:
    return ReleasePublic(
        model_name=record.model_name,
        version=record.version,
        sha256=record.sha256,
        created_by=record.created_by,
        created_at=record.created_at,
        envelope=envelope_of(record).to_json_obj(),
    )


@router.post(
    "/models/{name}/versions/{version}/release",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Audited],
    responses={200: {"description": "Already released; the existing release."}},
)
def post_release(
    name: ModelName,
    version: VersionNumber,
    request: Request,
    response: Response,
    ctx: Context,
    session: DbSession,
    caller: Operator,
) -> ReleasePublic:
    """Sign a release of this version with the release key (idempotent)."""
    record, created = release_version(session, ctx, name=name, version=version, principal=caller)
    return _answer(record, created, request, response)


def _answer(
    record: ReleaseRecord, created: bool, request: Request, response: Response
) -> ReleasePublic:
    """201 for a release recorded now, 200 for one recorded before; audited either way."""
    if not created:
        response.status_code = status.HTTP_200_OK
    target = f"{record.model_name}:{record.version}"
    request.state.audit = {"target": target, "sha256": record.sha256}
    return _public(record)


@router.post("/models/{name}/versions/{version}/release/prepare", dependencies=[Audited])
def post_prepare_release(
    name: ModelName,
    version: VersionNumber,
    request: Request,
    ctx: Context,
    session: DbSession,
    caller: Operator,
) -> dict[str, Any]:
    """The unsigned release of this version, to sign where the release key is kept."""
    release = prepare_release(session, ctx, name=name, version=version, principal=caller)
    request.state.audit = {"target": f"{name}:{version}"}
    return release.to_json_obj()


@router.post(
    "/models/{name}/versions/{version}/release/signed",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Audited],
    responses={200: {"description": "Already released; the existing release."}},
)
def post_signed_release(
    name: ModelName,
    version: VersionNumber,
    envelope: Annotated[dict[str, Any], Body(description="The signed release (DSSE envelope).")],
    request: Request,
    response: Response,
    ctx: Context,
    session: DbSession,
    caller: Operator,
) -> ReleasePublic:
    """Record a release signed elsewhere; it must verify against the trust root."""
    try:
        signed = Envelope.from_json_obj(envelope)
    except ProtocolError as exc:
        raise BadRequestError(f"not a signed release envelope: {exc}") from exc
    record, created = record_signed_release(
        session, ctx, name=name, version=version, envelope=signed, principal=caller
    )
    return _answer(record, created, request, response)


@router.get("/models/{name}/versions/{version}/release")
def get_one_release(
    name: ModelName, version: VersionNumber, session: DbSession, _caller: Viewer
) -> ReleasePublic:
    """The signed release of this version."""
    return _public(get_release(session, name, version))


@router.get("/releases")
def get_releases(session: DbSession, _caller: Viewer) -> list[ReleasePublic]:
    """Every release, oldest first."""
    return [_public(record) for record in list_releases(session)]
