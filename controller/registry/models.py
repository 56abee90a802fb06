"""The model registry: upload checks, content-addressed storage, versions and variants.

Invariants: nothing is recorded for a model that failed inspection; version numbers come
from ``models.next_version`` under a row lock, so they are never reused or duplicated,
even with several controller processes; every variant, upload and import keeps its
parent, and every upload and import its ``lineage`` (where the file came from); a new
upload or import whose I/O signature differs from the model's latest is refused unless
the caller allows the change. Uploads and imports share one path,
``register_model_file``: the same inspection, checks and storage, whatever the source.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from ..context import ControllerContext
from ..errors import ConflictError, JobError, ModelRejectedError, NotFoundError
from ..tokens import Principal
from .jobs import run_converter
from .tables import ModelRecord, ModelVersion, ReleaseRecord
from .uploads import ReceivedForm
from .validation_set import check_validation_set

__all__ = [
    "create_variant",
    "get_version",
    "list_models",
    "list_versions",
    "register_model_file",
    "register_upload",
    "run_job",
    "version_public_fields",
]

logger = logging.getLogger(__name__)

FORMAT_EXTENSIONS = {"onnx": ".onnx", "tflite": ".tflite"}
# An upload's original file name, as its lineage keeps it.
MAX_LINEAGE_TEXT_CHARS = 256


def run_job(ctx: ControllerContext, args: list[str]) -> dict[str, Any]:
    """Run one converter job under the configured limits, counting its outcome."""
    try:
        answer = run_converter(args, ctx.job_limits)
    except ModelRejectedError:
        ctx.metrics.converter_jobs.labels(args[0], "refused").inc()
        raise
    except JobError:
        ctx.metrics.converter_jobs.labels(args[0], "failed").inc()
        raise
    ctx.metrics.converter_jobs.labels(args[0], "ok").inc()
    return answer


def inspect_model(ctx: ControllerContext, path: Path) -> dict[str, Any]:
    return run_job(
        ctx, ["inspect", str(path), "--max-tensor-bytes", str(ctx.settings.max_tensor_bytes)]
    )


def register_upload(
    session: Session,
    ctx: ControllerContext,
    *,
    name: str,
    form: ReceivedForm,
    allow_signature_change: bool,
    principal: Principal,
) -> ModelVersion:
    """Inspect an uploaded model (and validation set), store it and record a version."""
    model_file = form.files["model"]
    validation = form.files.get("validation")
    return register_model_file(
        session,
        ctx,
        name=name,
        model_path=model_file.path,
        filename=model_file.filename,
        validation_path=validation.path if validation is not None else None,
        allow_signature_change=allow_signature_change,
        principal=principal,
        origin="upload",
        lineage={
            "source": "upload",
            "filename": model_file.filename[:MAX_LINEAGE_TEXT_CHARS],
            "uploaded_by": principal.name,
        },
    )


def register_model_file(
    session: Session,
    ctx: ControllerContext,
    *,
    name: str,
    model_path: Path,
    filename: str,
    validation_path: Path | None,
    allow_signature_change: bool,
    principal: Principal,
    origin: str,
    lineage: dict[str, Any],
) -> ModelVersion:
    """Inspect a model file (and validation set), store it and record a version.

    ``filename`` is the name the file came with: its extension must match its content.
    The files stay where they are; the store keeps its own copies.
    """
    extension = Path(filename).suffix.lower()
    if extension not in FORMAT_EXTENSIONS.values():
        raise ModelRejectedError(
            f"{filename!r}: only .onnx and .tflite files are accepted", "unsupported_format"
        )
    if model_path.stat().st_size == 0:
        raise ModelRejectedError("the model file is empty", "malformed_model")
    info = inspect_model(ctx, model_path)
    if FORMAT_EXTENSIONS[info["format"]] != extension:
        raise ModelRejectedError(
            f"{filename!r} holds a {info['format']} model, not {extension}",
            "unsupported_format",
        )
    if validation_path is not None:
        check_validation_set(
            validation_path,
            input_names=[spec["name"] for spec in info["inputs"]],
            output_names=[spec["name"] for spec in info["outputs"]],
            max_uncompressed_bytes=ctx.settings.max_validation_bytes * 8,
            input_shapes={spec["name"]: spec["shape"] for spec in info["inputs"]},
        )
    model = _lock_model(session, name)
    latest = _latest_version(session, name)
    if latest is not None and not allow_signature_change:
        _check_same_signature(latest, info)
    stored = ctx.store.put(model_path)
    validation_sha256 = ctx.store.put(validation_path).sha256 if validation_path else None
    version = _new_version(
        session,
        model,
        info,
        sha256=stored.sha256,
        size_bytes=stored.size_bytes,
        parent_id=latest.id if latest else None,
        origin=origin,
        status="registered",
        validation_sha256=validation_sha256,
        created_by=principal.name,
        lineage=lineage,
    )
    ctx.metrics.model_versions.labels(origin, "registered").inc()
    return version


def create_variant(
    session: Session,
    ctx: ControllerContext,
    *,
    name: str,
    version: int,
    mode: str,
    principal: Principal,
    max_latency_ratio: float | None = None,
) -> ModelVersion:
    """Derive a variant of ``name:version`` with ``mode``; record it accepted or rejected.

    ``max_latency_ratio`` overrides the controller's setting for this variant.
    """
    parent = get_version(session, name, version)
    parent_file = ctx.store.get(parent.sha256)
    work = Path(tempfile.mkdtemp(dir=_work_dir(ctx), prefix="variant-"))
    try:
        output = work / f"variant{FORMAT_EXTENSIONS[parent.format]}"
        args = [
            "variant",
            "--mode",
            mode,
            "--parent",
            str(parent_file.path),
            "--output",
            str(output),
            "--max-accuracy-drop-points",
            str(ctx.settings.max_accuracy_drop_points),
            "--min-top1-agreement",
            str(ctx.settings.min_top1_agreement),
            "--max-latency-ratio",
            str(max_latency_ratio or ctx.settings.max_latency_ratio),
        ]
        if parent.validation_sha256:
            args += ["--validation", str(ctx.store.get(parent.validation_sha256).path)]
        result = run_job(ctx, args)
        info = inspect_model(ctx, output)
        try:
            _check_same_signature(parent, info)
        except ConflictError as exc:
            raise ModelRejectedError(
                f"the {mode} variant changed the I/O signature: {exc}", "signature_mismatch"
            ) from exc
        model = _lock_model(session, name)
        stored = ctx.store.put(output)
        variant = _new_version(
            session,
            model,
            info,
            sha256=stored.sha256,
            size_bytes=stored.size_bytes,
            parent_id=parent.id,
            origin="variant",
            status=str(result["status"]),
            validation_sha256=parent.validation_sha256,
            created_by=principal.name,
            variant_mode=mode,
            report=result.get("report"),
            reasons=[str(r) for r in result.get("reasons", [])],
            notes=[str(n) for n in result.get("notes", [])],
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ctx.metrics.model_versions.labels("variant", variant.status).inc()
    return variant


def get_version(session: Session, name: str, version: int) -> ModelVersion:
    row = session.exec(
        select(ModelVersion).where(ModelVersion.model_name == name, ModelVersion.version == version)
    ).first()
    if row is None:
        raise NotFoundError(f"no version {version} of model {name!r}")
    return row


def list_models(session: Session) -> list[tuple[ModelRecord, int, int | None]]:
    """Every model with its number of versions and latest version number."""
    result = []
    for model in session.exec(select(ModelRecord).order_by(col(ModelRecord.name))).all():
        versions = session.exec(
            select(ModelVersion.version).where(ModelVersion.model_name == model.name)
        ).all()
        result.append((model, len(versions), max(versions) if versions else None))
    return result


def list_versions(session: Session, name: str) -> list[ModelVersion]:
    if session.get(ModelRecord, name) is None:
        raise NotFoundError(f"no model {name!r}")
    return list(
        session.exec(
            select(ModelVersion)
            .where(ModelVersion.model_name == name)
            .order_by(col(ModelVersion.version))
        ).all()
    )


def version_public_fields(session: Session, row: ModelVersion) -> dict[str, Any]:
    """The fields of ``ModelVersionPublic`` that need another lookup."""
    parent = session.get(ModelVersion, row.parent_id) if row.parent_id else None
    released = session.exec(
        select(ReleaseRecord.id).where(ReleaseRecord.model_version_id == row.id)
    ).first()
    return {
        "parent_version": parent.version if parent else None,
        "has_validation_set": row.validation_sha256 is not None,
        "released": released is not None,
    }


def _lock_model(session: Session, name: str) -> ModelRecord:
    """The model's row, locked until commit; created when it is the model's first push."""
    query = select(ModelRecord).where(ModelRecord.name == name).with_for_update()
    model = session.exec(query).first()
    if model is None:
        try:
            # A savepoint, so losing a race with another process keeps our transaction.
            with session.begin_nested():
                session.add(ModelRecord(name=name))
        except IntegrityError:
            logger.info("model %s was created concurrently", name)
        model = session.exec(query).one()
    return model


def _latest_version(session: Session, name: str) -> ModelVersion | None:
    return session.exec(
        select(ModelVersion)
        .where(ModelVersion.model_name == name)
        .order_by(col(ModelVersion.version).desc())
    ).first()


def _signature(spec: dict[str, Any] | ModelVersion) -> tuple[Any, Any]:
    inputs = spec["inputs"] if isinstance(spec, dict) else spec.inputs
    outputs = spec["outputs"] if isinstance(spec, dict) else spec.outputs

    def norm(tensors: list[dict[str, Any]]) -> list[tuple[str, str, tuple[int, ...]]]:
        return [(t["name"], t["datatype"], tuple(t["shape"])) for t in tensors]

    return norm(inputs), norm(outputs)


def _check_same_signature(previous: ModelVersion, info: dict[str, Any]) -> None:
    if _signature(previous) != _signature(info):
        old_in, old_out = _signature(previous)
        new_in, new_out = _signature(info)
        raise ConflictError(
            f"I/O signature differs from version {previous.version}: "
            f"inputs {old_in} -> {new_in}, outputs {old_out} -> {new_out}; "
            "applications call the model by it (push with --allow-signature-change to accept)"
        )


def _new_version(
    session: Session, model: ModelRecord, info: dict[str, Any], **fields: Any
) -> ModelVersion:
    row = ModelVersion(
        model_name=model.name,
        version=model.next_version,
        format=info["format"],
        opset=info.get("opset"),
        producer=info.get("producer"),
        inputs=info["inputs"],
        outputs=info["outputs"],
        **fields,
    )
    model.next_version += 1
    session.add(model)
    session.add(row)
    session.flush()
    return row


def _work_dir(ctx: ControllerContext) -> Path:
    ctx.settings.work_dir.mkdir(parents=True, exist_ok=True)
    return ctx.settings.work_dir
