"""Releases: sign exactly the artifact that was checked, with what devices need to check it.

A release is signed with the release key over the artifact's hash and length, its I/O
signature, the hash and length of its check bundle (golden inputs with expected outputs
and the reference profile for drift, a content-addressed ``.npz`` in the artifact store
that the profile job wrote) and the variant's evaluation report. Rejected variants are
never released. Releasing a version twice returns the first release: one version, one
signed release. A release stays under ``MAX_RELEASE_ENVELOPE_BYTES`` whatever the model
weighs; one that would not (thousands of tensors, a huge report) is refused with a 409
and nothing is recorded.

Every release carries its version's provenance (``registry.provenance``): the source and
run of its root, the parent a variant was derived from and how, its evaluation summary,
and who released and approved it, so the signed document alone says where the model came
from. ``build_release`` stays pure: the caller looks up the version's chain.

With the release key offline (``release_key = "offline"``) the controller cannot sign:
``prepare_release`` profiles the version, stores its check bundle and returns the
unsigned document; it is signed on another machine, and ``record_signed_release`` takes
it back only when it verifies against the trust root's ``release`` role and names
exactly this version's artifact and a check bundle the store holds.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from protocol import (
    MAX_RELEASE_ENVELOPE_BYTES,
    Artifact,
    CheckBundleRef,
    Envelope,
    MalformedDocumentError,
    ProtocolError,
    Release,
    RuntimeRequirements,
    TensorSpec,
    verify_document,
)

from ..context import ControllerContext
from ..errors import ConflictError, JobError, NotFoundError
from ..tables import utcnow
from ..tokens import Principal
from .artifact_store import StoredFile, sha256_of_file
from .lineage import derivation_chain
from .models import FORMAT_EXTENSIONS, get_version, run_job
from .provenance import ReleaseRequest, provenance_of
from .tables import ModelVersion, ReleaseRecord

__all__ = [
    "build_release",
    "get_release",
    "list_releases",
    "prepare_release",
    "record_signed_release",
    "release_version",
]

RUNTIME_BY_FORMAT = {"onnx": "onnxruntime", "tflite": "litert"}


def release_version(
    session: Session,
    ctx: ControllerContext,
    *,
    name: str,
    version: int,
    principal: Principal,
    approved_by: str | None = None,
    approved_at: datetime | None = None,
    channel: str | None = None,
    pipeline: str | None = None,
) -> tuple[ReleaseRecord, bool]:
    """Sign a release of ``name:version``; returns it and whether it was created now.

    ``approved_by``, ``approved_at``, ``channel`` and ``pipeline`` go into the release's
    provenance, for a release a pipeline makes (after an operator's approval, if needed).
    """
    row, existing = _releasable(session, name, version)
    if existing is not None:
        return existing, False
    ctx.signer.release_key  # noqa: B018 - refuses at once, before a profile job, when offline
    request = ReleaseRequest(
        released_by=principal.name,
        approved_by=approved_by,
        approved_at=approved_at,
        channel=channel,
        pipeline=pipeline,
    )
    chain = derivation_chain(session, row)
    with _profiled(ctx, row) as bundle:
        release = build_release(row, bundle, now=utcnow(), chain=chain, request=request)
        envelope = _sign(ctx, release)
        ctx.store.put(bundle.path)  # only a release that will be recorded keeps its bundle
    return _record(session, row, envelope, principal)


def prepare_release(
    session: Session,
    ctx: ControllerContext,
    *,
    name: str,
    version: int,
    principal: Principal | None = None,
    approved_by: str | None = None,
    approved_at: datetime | None = None,
    channel: str | None = None,
    pipeline: str | None = None,
) -> Release:
    """The unsigned release of ``name:version``, its check bundle stored, for signing
    elsewhere; a version released already answers ``ConflictError``. The provenance
    keywords are ``release_version``'s."""
    row, existing = _releasable(session, name, version)
    if existing is not None:
        raise ConflictError(f"{name}:{version} is released already")
    request = ReleaseRequest(
        released_by=principal.name if principal else None,
        approved_by=approved_by,
        approved_at=approved_at,
        channel=channel,
        pipeline=pipeline,
    )
    chain = derivation_chain(session, row)
    with _profiled(ctx, row) as bundle:
        release = build_release(row, bundle, now=utcnow(), chain=chain, request=request)
        ctx.store.put(bundle.path)
    return release


def record_signed_release(
    session: Session,
    ctx: ControllerContext,
    *,
    name: str,
    version: int,
    envelope: Envelope,
    principal: Principal,
) -> tuple[ReleaseRecord, bool]:
    """Record a release signed elsewhere, once it verifies and fits this version."""
    row, existing = _releasable(session, name, version)
    if existing is not None:
        return existing, False
    what = f"{name}:{version}"
    size = len(envelope.to_bytes())
    if size > MAX_RELEASE_ENVELOPE_BYTES:
        raise ConflictError(
            f"the signed release is {size} bytes, over {MAX_RELEASE_ENVELOPE_BYTES}"
        )
    try:
        release = verify_document(envelope, Release, ctx.signer.trust_root)
    except ProtocolError as exc:
        raise ConflictError(f"the signed release of {what} does not verify: {exc}") from exc
    artifact = release.artifact
    if (release.model, release.version) != (name, version) or (
        artifact.sha256,
        artifact.length,
    ) != (row.sha256, row.size_bytes):
        raise ConflictError(
            f"the signed release is of {release.model}:{release.version} "
            f"({artifact.sha256[:12]}), not of {what} ({row.sha256[:12]})"
        )
    if release.check_bundle is not None:
        try:
            stored = ctx.store.get(release.check_bundle.sha256)
        except NotFoundError as exc:
            raise ConflictError(
                f"the check bundle the release names is not stored: prepare {what} here first"
            ) from exc
        if stored.size_bytes != release.check_bundle.length:
            raise ConflictError("the check bundle the release names has another length")
    return _record(session, row, envelope, principal)


def _releasable(
    session: Session, name: str, version: int
) -> tuple[ModelVersion, ReleaseRecord | None]:
    """The version, and its release if it has one; a rejected version is refused."""
    row = get_version(session, name, version)
    existing = session.exec(
        select(ReleaseRecord).where(ReleaseRecord.model_version_id == row.id)
    ).first()
    if existing is None and row.status == "rejected":
        reasons = "; ".join(row.reasons) or "see its report"
        raise ConflictError(f"{name}:{version} was rejected by the quality gate ({reasons})")
    return row, existing


def _record(
    session: Session, row: ModelVersion, envelope: Envelope, principal: Principal
) -> tuple[ReleaseRecord, bool]:
    name, version = row.model_name, row.version
    record = ReleaseRecord(
        model_version_id=row.id or 0,
        model_name=name,
        version=version,
        sha256=row.sha256,
        envelope=envelope.to_bytes().decode("utf-8"),
        created_by=principal.name,
    )
    try:
        # A savepoint: when another process released this version first, keep theirs.
        with session.begin_nested():
            session.add(record)
    except IntegrityError:
        winner = session.exec(
            select(ReleaseRecord).where(ReleaseRecord.model_version_id == row.id)
        ).one()
        return winner, False
    return record, True


def _sign(ctx: ControllerContext, release: Release) -> Envelope:
    what = f"{release.model}:{release.version}"
    try:
        envelope = release.sign([ctx.signer.release_key])
    except ProtocolError as exc:
        raise ConflictError(f"the release of {what} cannot be signed: {exc}") from exc
    size = len(envelope.to_bytes())
    if size > MAX_RELEASE_ENVELOPE_BYTES:
        raise ConflictError(
            f"the signed release of {what} would be {size} bytes, more than "
            f"{MAX_RELEASE_ENVELOPE_BYTES}: the model declares too many inputs and outputs, "
            "or its evaluation report is too large"
        )
    return envelope


@contextmanager
def _profiled(ctx: ControllerContext, row: ModelVersion) -> Iterator[StoredFile]:
    """Run the profile job; yield the check bundle it wrote (in a work dir, not stored)."""
    ctx.settings.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=ctx.settings.work_dir, prefix="profile-"))
    try:
        bundle = work / "check-bundle.npz"
        args = [
            "profile",
            "--model",
            str(ctx.store.get(row.sha256).path),
            "--golden-count",
            str(ctx.settings.golden_count),
            "--bundle-out",
            str(bundle),
        ]
        if row.validation_sha256:
            args += ["--validation", str(ctx.store.get(row.validation_sha256).path)]
        run_job(ctx, args)
        if not bundle.is_file() or bundle.stat().st_size == 0:
            raise JobError("the profile job wrote no check bundle")
        yield StoredFile(sha256_of_file(bundle), bundle.stat().st_size, bundle)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_release(
    row: ModelVersion,
    bundle: StoredFile,
    *,
    now: datetime,
    chain: Sequence[ModelVersion] = (),
    request: ReleaseRequest | None = None,
) -> Release:
    """The Release document for a version and its check bundle.

    ``chain`` is the version's parent, grandparent, … up to its root
    (``lineage.derivation_chain``): the provenance names the parent a variant was derived
    from and carries the root's lineage. ``request`` says who released and approved it.
    """
    try:
        return Release(
            model=row.model_name,
            version=row.version,
            artifact=Artifact(
                sha256=row.sha256,
                length=row.size_bytes,
                format=row.format,
                filename=f"{row.model_name}-v{row.version}{FORMAT_EXTENSIONS[row.format]}",
            ),
            runtime=RuntimeRequirements(
                name=RUNTIME_BY_FORMAT[row.format],
                opset=row.opset if row.format == "onnx" else None,
            ),
            inputs=[TensorSpec(**spec) for spec in row.inputs],
            outputs=[TensorSpec(**spec) for spec in row.outputs],
            check_bundle=CheckBundleRef(sha256=bundle.sha256, length=bundle.size_bytes),
            evaluation=row.report,
            created_at=now,
            notes=f"{row.origin}" + (f" {row.variant_mode}" if row.variant_mode else ""),
            provenance=provenance_of(row, chain, request or ReleaseRequest()),
        )
    except (ValueError, KeyError, TypeError, MalformedDocumentError) as exc:
        raise JobError(f"the version and its check bundle make no valid release: {exc}") from exc


def get_release(session: Session, name: str, version: int) -> ReleaseRecord:
    record = session.exec(
        select(ReleaseRecord).where(
            ReleaseRecord.model_name == name, ReleaseRecord.version == version
        )
    ).first()
    if record is None:
        raise NotFoundError(f"{name}:{version} has not been released")
    return record


def list_releases(session: Session, name: str | None = None) -> list[ReleaseRecord]:
    query = select(ReleaseRecord).order_by(col(ReleaseRecord.id))
    if name is not None:
        query = query.where(ReleaseRecord.model_name == name)
    return list(session.exec(query).all())


def envelope_of(record: ReleaseRecord) -> Envelope:
    return Envelope.from_bytes(record.envelope.encode("utf-8"))
