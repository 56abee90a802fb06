"""Jobs: long work (variants, evaluations, releases) that a request queued."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Request, status

from ..pipelines.jobs import enqueue_job, get_job, list_jobs
from ..pipelines.schemas import JobCreate, JobPublic
from ..registry.models import get_version
from .deps import Audited, DbSession, Operator, Viewer

router = APIRouter(prefix="/api/v1", tags=["jobs"])


@router.get("/jobs/{job_id}")
def get_one_job(
    job_id: Annotated[int, Path(ge=1, le=2**63 - 1)], session: DbSession, _caller: Viewer
) -> JobPublic:
    """A job: queued, running (with progress), succeeded (with its result) or failed (with
    its error and the HTTP status the request would have had)."""
    return JobPublic.of(get_job(session, job_id))


@router.get("/jobs")
def get_jobs(
    session: DbSession,
    _caller: Viewer,
    status_is: Annotated[str | None, Query(alias="status", max_length=16)] = None,
) -> list[JobPublic]:
    """The latest 100 jobs, newest first."""
    return [JobPublic.of(job) for job in list_jobs(session, status=status_is)]


@router.post("/jobs", status_code=status.HTTP_202_ACCEPTED, dependencies=[Audited])
def post_job(
    body: Annotated[JobCreate, Body()], request: Request, session: DbSession, caller: Operator
) -> JobPublic:
    """Queue a variant or a release; answers at once with the job to poll
    (``GET /api/v1/jobs/{id}``), so a slow conversion never holds the request."""
    get_version(session, body.model, body.version)  # 404 now, not in the job
    args = body.model_dump(exclude={"kind"}, exclude_none=True)
    job = enqueue_job(session, body.kind, args, actor=caller.name)
    request.state.audit = {"target": f"{body.model}:{body.version}", "job": job.id, **args}
    return JobPublic.of(job)
