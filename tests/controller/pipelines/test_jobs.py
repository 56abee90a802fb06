"""The jobs table on SQLite and PostgreSQL: queued over the API, claimed once, taken over
when their worker stops beating, failed with the status a request would have had."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text

from controller.db import session_scope
from controller.pipelines.jobs import CLAIM_EXPIRY_S, MAX_ATTEMPTS, claim_job, enqueue_job
from controller.pipelines.worker import DeliveryWorker
from controller.tokens import Role
from simulator.demo_models import build_digits_model
from tests.controller.conftest import bearer, ctx


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_digits_model(tmp_path_factory.mktemp("models"))


def push(client: TestClient, token: str, model: tuple[Path, Path]) -> None:
    # With its validation set: the gate judges the variant on real digits, not noise.
    files = {
        name: (path.name, path.read_bytes())
        for name, path in zip(("model", "validation"), model, strict=True)
    }
    response = client.post("/api/v1/models/digits/versions", headers=bearer(token), files=files)
    assert response.status_code == 201, response.text


def test_a_queued_variant_answers_at_once_and_its_job_says_how_it_ended(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], digits: tuple[Path, Path]
) -> None:
    operator = tokens[Role.OPERATOR]
    push(client, operator, digits)
    body = {"kind": "variant", "model": "digits", "version": 1, "mode": "int8-dynamic"}

    queued = client.post("/api/v1/jobs", headers=bearer(operator), json=body)

    assert queued.status_code == 202, queued.text
    job_id = queued.json()["id"]
    assert queued.json()["status"] == "queued"
    assert asyncio.run(DeliveryWorker(ctx(app)).run_jobs()) == 1
    done = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(tokens[Role.VIEWER])).json()
    assert done["status"] == "succeeded", done
    assert done["result"]["version"] == 2
    assert done["result"]["status"] == "accepted", done["result"]

    # Releasing a version the gate rejected fails the job as the request would: 409.
    with ctx(app).engine.begin() as connection:
        connection.execute(text("UPDATE model_versions SET status = 'rejected' WHERE version = 2"))
    release = {"kind": "release", "model": "digits", "version": 2}
    job_id = client.post("/api/v1/jobs", headers=bearer(operator), json=release).json()["id"]
    asyncio.run(DeliveryWorker(ctx(app)).run_jobs())
    failed = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(operator)).json()
    assert (failed["status"], failed["error_status"]) == ("failed", 409)
    assert "rejected by the quality gate" in failed["error"]


def test_jobs_are_refused_for_unknown_versions_kinds_and_viewers(
    client: TestClient, tokens: dict[Role, str]
) -> None:
    operator = tokens[Role.OPERATOR]
    unknown = {"kind": "release", "model": "nothing", "version": 1}
    assert client.post("/api/v1/jobs", headers=bearer(operator), json=unknown).status_code == 404
    bad_kind = {"kind": "shell", "model": "digits", "version": 1}
    assert client.post("/api/v1/jobs", headers=bearer(operator), json=bad_kind).status_code == 422
    viewer = client.post("/api/v1/jobs", headers=bearer(tokens[Role.VIEWER]), json=unknown)
    assert viewer.status_code == 403
    assert client.get("/api/v1/jobs/999", headers=bearer(operator)).status_code == 404


def test_a_job_whose_worker_stopped_beating_is_taken_over_then_failed_after_its_attempts(
    app: FastAPI,
) -> None:
    engine = ctx(app).engine
    with session_scope(engine) as session:
        job_id = enqueue_job(session, "release", {"model": "m", "version": 1}, actor="t").id
    now = datetime.now(UTC)
    with session_scope(engine) as session:
        first = claim_job(session, "worker-a", now=now)
        assert first is not None
        assert first.id == job_id
    with session_scope(engine) as session:
        assert claim_job(session, "worker-b", now=now) is None  # a live claim is not shared
    later = now
    for attempt in range(2, MAX_ATTEMPTS + 1):
        later += timedelta(seconds=CLAIM_EXPIRY_S + 1)  # worker-a (then b…) was killed
        with session_scope(engine) as session:
            taken = claim_job(session, f"worker-{attempt}", now=later)
            assert taken is not None
            assert (taken.id, taken.attempts) == (job_id, attempt)
    later += timedelta(seconds=CLAIM_EXPIRY_S + 1)
    with session_scope(engine) as session:
        assert claim_job(session, "worker-last", now=later) is None
    with session_scope(engine) as session:
        from controller.pipelines.jobs import get_job

        job = get_job(session, job_id)
        assert (job.status, job.error) == ("failed", f"its worker stopped {MAX_ATTEMPTS} times")
