"""Import a model version from an MLflow model registry (``edgefleet model import``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..registry.mlflow_import import download_mlflow_model, import_mlflow_model
from ..registry.models import version_public_fields
from ..registry.schemas import MODEL_NAME_PATTERN, ModelVersionPublic
from .deps import Audited, Context, DbSession, Operator

__all__ = ["ImportedVersionPublic", "MlflowImport", "router"]

router = APIRouter(prefix="/api/v1", tags=["models"])

ModelName = Annotated[str, Path(pattern=MODEL_NAME_PATTERN, description="The model's name.")]
PIPELINE_HEADER = "X-Edgefleet-Pipeline"


class MlflowImport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        max_length=600,
        description="The registered model version: models:/NAME/VERSION or models:/NAME@ALIAS.",
    )
    mlflow_uri: str = Field(
        max_length=2048, description="The MLflow tracking server, e.g. http://mlflow:5000."
    )
    allow_signature_change: bool = False
    channel: str | None = Field(
        default=None, max_length=128, description="Run the channel's pipeline on the new version."
    )


class ImportedVersionPublic(ModelVersionPublic):
    pipeline: str | None = Field(
        default=None, description="The pipeline started in ``channel``, if one was asked for."
    )


@router.post(
    "/models/{name}/import",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Audited],
    responses={502: {"description": "MLflow is unreachable or answered nonsense."}},
)
async def import_version(
    name: ModelName,
    body: MlflowImport,
    request: Request,
    response: Response,
    ctx: Context,
    session: DbSession,
    caller: Operator,
) -> ImportedVersionPublic:
    """Fetch a version's ONNX or TFLite file (and ``validation.npz``) from MLflow.

    The file is inspected and stored like an upload; the version records its lineage:
    the run, experiment, parameters, metrics and datasets MLflow logged. An unknown
    MLflow version is 404, a version with no model file 422, a file over the upload
    limit 413, and an MLflow that cannot be reached or answers nonsense 502.
    """
    if body.channel is not None:
        from ..pipelines.runs import get_channel  # written beside this; imported when used

        get_channel(session, body.channel)  # 404 before anything is downloaded
    directory = ctx.settings.work_dir / "imports"
    directory.mkdir(parents=True, exist_ok=True)
    downloaded = await run_in_threadpool(
        download_mlflow_model,
        body.source,
        mlflow_uri=body.mlflow_uri,
        directory=directory,
        max_model_bytes=ctx.settings.max_upload_bytes,
        max_validation_bytes=ctx.settings.max_validation_bytes,
    )  # an unreachable or nonsensical MLflow is an UpstreamError: 502
    try:
        row = await run_in_threadpool(
            import_mlflow_model,
            session,
            ctx,
            name=name,
            downloaded=downloaded,
            allow_signature_change=body.allow_signature_change,
            principal=caller,
        )
    finally:
        downloaded.discard()
    audit = {
        "target": f"{name}:{row.version}",
        "sha256": row.sha256,
        "source": downloaded.lineage.get("source_uri"),
        "mlflow_uri": downloaded.lineage.get("mlflow_uri"),
        "run_id": downloaded.lineage.get("run_id"),
    }
    pipeline_id = None
    if body.channel is not None:
        from ..pipelines.runs import start_pipeline

        pipeline = start_pipeline(
            session, channel=body.channel, model=name, version=row.version, actor=caller.name
        )
        pipeline_id = pipeline.id
        response.headers[PIPELINE_HEADER] = pipeline_id
        audit.update(channel=body.channel, pipeline=pipeline_id)
    request.state.audit = audit
    return ImportedVersionPublic.model_validate(
        {**row.model_dump(), **version_public_fields(session, row), "pipeline": pipeline_id}
    )
