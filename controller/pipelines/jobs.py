"""The jobs table: long work (conversions, evaluations, releases) off the HTTP request.

A request or a pipeline queues a job (``enqueue_job``) and gets its id at once; a worker
in any controller replica claims it (``claim_job``: one transaction, ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, so two replicas never take the same job), runs it (``run_job``)
while beating its heartbeat, and records the result or the error with the HTTP status
an API caller would have got (``finish_job``).

A claim whose heartbeat is older than ``CLAIM_EXPIRY_S`` was lost with its replica (a
restart, a kill): the next claim takes the job again, up to ``MAX_ATTEMPTS`` runs, then
it fails saying so. A job is idempotent enough to run twice: a variant run twice records
two versions at worst (both gated), a release run twice returns the first release.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_
from sqlmodel import Session, col, select

from ..context import ControllerContext
from ..db import session_scope
from ..errors import ControllerError, NotFoundError
from ..registry.models import create_variant, get_version
from ..registry.models import run_job as run_converter_job
from ..registry.releases import release_version
from ..tables import utcnow
from ..tokens import Principal, Role
from .tables import JobRecord

__all__ = [
    "CLAIM_EXPIRY_S",
    "HEARTBEAT_S",
    "JOB_KINDS",
    "MAX_ATTEMPTS",
    "JobOutcome",
    "claim_job",
    "enqueue_job",
    "finish_job",
    "get_job",
    "heartbeat",
    "run_job",
]

logger = logging.getLogger(__name__)

JOB_KINDS = ("variant", "release", "evaluate")
CLAIM_EXPIRY_S = 60.0
HEARTBEAT_S = 10.0
MAX_ATTEMPTS = 3
UNFINISHED = ("queued", "running")


@dataclass(frozen=True)
class JobOutcome:
    result: dict[str, Any] | None = None
    error: str | None = None
    error_status: int | None = None


def enqueue_job(session: Session, kind: str, args: dict[str, Any], *, actor: str) -> JobRecord:
    if kind not in JOB_KINDS:
        raise ValueError(f"unknown job kind {kind!r}")
    job = JobRecord(kind=kind, args=args, created_by=actor)
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: int) -> JobRecord:
    job = session.get(JobRecord, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    return job


def list_jobs(session: Session, *, status: str | None = None, limit: int = 100) -> list[JobRecord]:
    query = select(JobRecord).order_by(col(JobRecord.id).desc()).limit(limit)
    if status is not None:
        query = query.where(JobRecord.status == status)
    return list(session.exec(query).all())


def claim_job(session: Session, worker: str, *, now: datetime) -> JobRecord | None:
    """The oldest job that is queued or lost by its worker, now ours; None when none is."""
    stale = now - timedelta(seconds=CLAIM_EXPIRY_S)
    job = session.exec(
        select(JobRecord)
        .where(
            or_(
                col(JobRecord.status) == "queued",
                (col(JobRecord.status) == "running") & (col(JobRecord.heartbeat_at) < stale),
            )
        )
        .order_by(col(JobRecord.id))
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()
    if job is None:
        return None
    if job.attempts >= MAX_ATTEMPTS:
        _finish(job, JobOutcome(error=f"its worker stopped {job.attempts} times", error_status=500))
        session.add(job)
        return None
    if job.status == "running":
        logger.warning("job %s: %s stopped beating; %s takes it over", job.id, job.worker, worker)
    job.status, job.worker, job.heartbeat_at = "running", worker, now
    job.attempts += 1
    job.progress = f"running on {worker} (attempt {job.attempts})"
    session.add(job)
    return job


def heartbeat(session: Session, job_id: int, worker: str, *, now: datetime) -> None:
    job = session.get(JobRecord, job_id)
    if job is not None and job.status == "running" and job.worker == worker:
        job.heartbeat_at = now
        session.add(job)


def finish_job(session: Session, job_id: int, worker: str, outcome: JobOutcome) -> bool:
    """Record the outcome; False when another worker took the job over meanwhile."""
    job = session.get(JobRecord, job_id, with_for_update=True)
    if job is None or job.status != "running" or job.worker != worker:
        return False
    _finish(job, outcome)
    session.add(job)
    return True


def _finish(job: JobRecord, outcome: JobOutcome) -> None:
    job.status = "failed" if outcome.error is not None else "succeeded"
    job.result, job.error, job.error_status = outcome.result, outcome.error, outcome.error_status
    job.progress = job.status
    job.finished_at = utcnow()


def run_job(ctx: ControllerContext, job: JobRecord) -> JobOutcome:
    """Run a claimed job in its own transaction; every refusal becomes the job's error."""
    from ..app import STATUS_BY_ERROR  # the API's mapping, so a job fails as a request would

    try:
        with session_scope(ctx.engine) as session:
            return JobOutcome(result=_RUNNERS[job.kind](session, ctx, job))
    except ControllerError as exc:
        code = next((code for kind, code in STATUS_BY_ERROR if isinstance(exc, kind)), 500)
        return JobOutcome(error=str(exc), error_status=code)
    except Exception as exc:  # a job's crash is its failure, never the worker's
        logger.exception("job %s (%s) crashed", job.id, job.kind)
        return JobOutcome(error=f"internal error: {type(exc).__name__}", error_status=500)


def _principal(job: JobRecord) -> Principal:
    return Principal(token_id=f"job-{job.id}", name=job.created_by, role=Role.OPERATOR)


def _run_variant(session: Session, ctx: ControllerContext, job: JobRecord) -> dict[str, Any]:
    args = job.args
    row = create_variant(
        session,
        ctx,
        name=args["model"],
        version=int(args["version"]),
        mode=str(args["mode"]),
        principal=_principal(job),
        max_latency_ratio=args.get("max_latency_ratio"),
    )
    return {
        "model": row.model_name,
        "version": row.version,
        "status": row.status,
        "reasons": row.reasons,
        "notes": row.notes,
    }


def _run_release(session: Session, ctx: ControllerContext, job: JobRecord) -> dict[str, Any]:
    args = job.args
    approved_at = args.get("approved_at")
    record, created = release_version(
        session,
        ctx,
        name=args["model"],
        version=int(args["version"]),
        principal=_principal(job),
        **_provenance_keywords(args, approved_at),
    )
    return {
        "model": record.model_name,
        "version": record.version,
        "sha256": record.sha256,
        "created": created,
    }


def _provenance_keywords(args: dict[str, Any], approved_at: str | None) -> dict[str, Any]:
    """What a pipeline adds to the release's provenance (none for a plain release)."""
    keywords: dict[str, Any] = {}
    for key in ("approved_by", "channel", "pipeline"):
        if args.get(key):
            keywords[key] = args[key]
    if approved_at:
        at = datetime.fromisoformat(approved_at)
        # SQLite gives timestamps back without their zone; they were written in UTC.
        keywords["approved_at"] = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return keywords


def _run_evaluate(session: Session, ctx: ControllerContext, job: JobRecord) -> dict[str, Any]:
    """Compare a candidate version with a baseline version on a validation set."""
    args = job.args
    baseline = get_version(session, args["model"], int(args["baseline"]))
    candidate = get_version(session, args["model"], int(args["candidate"]))
    command = [
        "evaluate",
        "--parent",
        str(ctx.store.get(baseline.sha256).path),
        "--candidate",
        str(ctx.store.get(candidate.sha256).path),
    ]
    validation = candidate.validation_sha256 or baseline.validation_sha256
    if validation:
        command += ["--validation", str(ctx.store.get(validation).path)]
    return run_converter_job(ctx, command)


_RUNNERS = {"variant": _run_variant, "release": _run_release, "evaluate": _run_evaluate}
