"""Models, versions and variants."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response, status
from starlette.concurrency import run_in_threadpool

from ..errors import BadRequestError
from ..pipelines.runs import get_channel, start_pipeline
from ..registry.models import (
    create_variant,
    get_version,
    list_models,
    list_versions,
    register_upload,
    version_public_fields,
)
from ..registry.schemas import MODEL_NAME_PATTERN, ModelPublic, ModelVersionPublic, VariantCreate
from ..registry.tables import ModelVersion
from ..registry.uploads import receive_multipart
from .deps import Audited, Context, DbSession, Operator, Viewer

router = APIRouter(prefix="/api/v1/models", tags=["models"])

ModelName = Annotated[str, Path(pattern=MODEL_NAME_PATTERN, description="The model's name.")]
VersionNumber = Annotated[int, Path(ge=1, le=2**31 - 1)]

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["model"],
                    "properties": {
                        "model": {"type": "string", "format": "binary"},
                        "validation": {"type": "string", "format": "binary"},
                        "allow_signature_change": {"type": "boolean"},
                        "channel": {
                            "type": "string",
                            "description": "Run the channel's pipeline on the new version.",
                        },
                    },
                }
            }
        },
    }
}
PIPELINE_HEADER = "X-Edgefleet-Pipeline"
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"", "0", "false", "no", "off"}


def _public(session: DbSession, row: ModelVersion) -> ModelVersionPublic:
    return ModelVersionPublic.model_validate(
        {**row.model_dump(), **version_public_fields(session, row)}
    )


@router.get("")
def get_models(session: DbSession, _caller: Viewer) -> list[ModelPublic]:
    """Every model with its number of versions."""
    return [
        ModelPublic(name=m.name, versions=n, latest_version=latest, created_at=m.created_at)
        for m, n, latest in list_models(session)
    ]


@router.get("/{name}/versions")
def get_versions(name: ModelName, session: DbSession, _caller: Viewer) -> list[ModelVersionPublic]:
    """Every version of a model, oldest first."""
    return [_public(session, row) for row in list_versions(session, name)]


@router.get("/{name}/versions/{version}")
def get_one_version(
    name: ModelName, version: VersionNumber, session: DbSession, _caller: Viewer
) -> ModelVersionPublic:
    """One version with its signature, lineage and evaluation report."""
    return _public(session, get_version(session, name, version))


@router.post(
    "/{name}/versions",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=UPLOAD_BODY,
    dependencies=[Audited],
)
async def push_version(
    name: ModelName,
    request: Request,
    response: Response,
    ctx: Context,
    session: DbSession,
    caller: Operator,
) -> ModelVersionPublic:
    """Upload a model (``.onnx`` or ``.tflite``) with an optional validation set (``.npz``).

    The model is inspected in a sandboxed job; a malformed or unsafe model is refused with
    422 and the reason. A model whose I/O signature differs from the latest version is
    refused with 409 unless ``allow_signature_change`` is true. With ``channel`` the
    version goes into that channel's pipeline; its id is in ``X-Edgefleet-Pipeline``.
    """
    form = await receive_multipart(
        request.headers.get("content-type", ""),
        request.stream(),
        directory=ctx.settings.work_dir / "uploads",
        file_limits={
            "model": ctx.settings.max_upload_bytes,
            "validation": ctx.settings.max_validation_bytes,
        },
        field_names={"allow_signature_change", "channel"},
    )
    try:
        if "model" not in form.files:
            raise BadRequestError("the upload needs a file part named 'model'")
        allow = form.fields.get("allow_signature_change", "").strip().lower()
        if allow not in TRUE_WORDS | FALSE_WORDS:
            raise BadRequestError("allow_signature_change must be true or false")
        channel = form.fields.get("channel", "").strip() or None
        if channel is not None:
            get_channel(session, channel)  # 404 before the upload is inspected
        row = await run_in_threadpool(
            register_upload,
            session,
            ctx,
            name=name,
            form=form,
            allow_signature_change=allow in TRUE_WORDS,
            principal=caller,
        )
    finally:
        form.discard()
    audit = {"target": f"{name}:{row.version}", "sha256": row.sha256}
    if channel is not None:
        pipeline = start_pipeline(
            session, channel=channel, model=name, version=row.version, actor=caller.name
        )
        response.headers[PIPELINE_HEADER] = pipeline.id
        audit.update(channel=channel, pipeline=pipeline.id)
    request.state.audit = audit
    return _public(session, row)


@router.post(
    "/{name}/versions/{version}/variants",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Audited],
)
def post_variant(
    name: ModelName,
    version: VersionNumber,
    body: VariantCreate,
    request: Request,
    ctx: Context,
    session: DbSession,
    caller: Operator,
) -> ModelVersionPublic:
    """Derive a quantized variant; it is recorded ``accepted`` or ``rejected`` by the gate."""
    row = create_variant(
        session,
        ctx,
        name=name,
        version=version,
        mode=body.mode,
        principal=caller,
        max_latency_ratio=body.max_latency_ratio,
    )
    request.state.audit = {
        "target": f"{name}:{row.version}",
        "parent": f"{name}:{version}",
        "mode": body.mode,
        "status": row.status,
    }
    return _public(session, row)
