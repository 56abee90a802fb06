"""The delivery worker: runs queued jobs and advances channel pipelines, in every replica.

Jobs run one at a time per replica, in a thread (a conversion is CPU-bound and its
converter is a child process anyway), while the loop beats the job's heartbeat so no
other replica takes it over. Each iteration is guarded like the fleet loops: an error is
logged with its traceback and the loop goes on after its interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from ..context import ControllerContext
from ..db import session_scope
from .jobs import HEARTBEAT_S, JobOutcome, claim_job, finish_job, heartbeat, run_job
from .runs import advance_pipelines
from .tables import JobRecord

__all__ = ["DeliveryWorker"]

logger = logging.getLogger(__name__)

JOB_POLL_S = 1.0
PIPELINE_INTERVAL_S = 2.0


class DeliveryWorker:
    def __init__(self, ctx: ControllerContext) -> None:
        self.ctx = ctx
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._every(JOB_POLL_S, self.run_jobs), name="jobs")
            group.create_task(
                self._every(PIPELINE_INTERVAL_S, self.advance_pipelines), name="pipelines"
            )

    async def run_jobs(self) -> int:
        """Run queued jobs until none is left; returns how many ran."""
        ran = 0
        while (job := await asyncio.to_thread(self._claim)) is not None:
            job_id = job.id or 0
            logger.info("job %s (%s %s) started", job_id, job.kind, job.args)
            beating = asyncio.create_task(self._beat(job_id))
            try:
                outcome = await asyncio.to_thread(run_job, self.ctx, job)
            finally:
                beating.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await beating  # its errors were logged; the outcome is recorded below
            await asyncio.to_thread(self._finish, job_id, outcome)
            logger.info(
                "job %s %s", job_id, "failed: " + outcome.error if outcome.error else "done"
            )
            ran += 1
            await self.advance_pipelines()  # the step that waited for it goes on now
        return ran

    async def advance_pipelines(self) -> None:
        await asyncio.to_thread(
            advance_pipelines,
            self.ctx.engine,
            max_accuracy_drop_points=self.ctx.settings.max_accuracy_drop_points,
        )

    def _claim(self) -> JobRecord | None:
        with session_scope(self.ctx.engine) as session:
            job = claim_job(session, self.name, now=datetime.now(UTC))
            if job is not None:
                session.flush()
                session.expunge(job)
            return job

    def _finish(self, job_id: int, outcome: JobOutcome) -> None:
        with session_scope(self.ctx.engine) as session:
            if not finish_job(session, job_id, self.name, outcome):
                logger.warning(
                    "job %s was taken over by another worker; its result is dropped", job_id
                )

    async def _beat(self, job_id: int) -> None:
        """Beat until cancelled; a failed beat (a busy database) is logged and the next
        one tried, so it never ends the job or loses its result."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await asyncio.to_thread(self._heartbeat, job_id)
            except Exception:
                logger.exception("job %s: a heartbeat failed; trying again", job_id)

    def _heartbeat(self, job_id: int) -> None:
        with session_scope(self.ctx.engine) as session:
            heartbeat(session, job_id, self.name, now=datetime.now(UTC))

    @staticmethod
    async def _every(interval_s: float, step: Callable[[], Awaitable[object]]) -> None:
        while True:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("delivery loop %s failed; trying again", step.__name__)
            await asyncio.sleep(interval_s)
