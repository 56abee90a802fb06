"""Model-checking children get a minimal environment, never the parent's secrets.

Found in the security review: converter jobs on the controller and the sandboxed check on
the agent inherited the whole environment, ``EDGEFLEET_KEY_PASSPHRASE`` included, so a
model that exploited its parser could read the passphrase of the signing keys.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import pytest

from agent.update import sandbox
from controller.registry import jobs
from controller.registry.jobs import JobLimits, run_converter
from tests.agent.sandbox.conftest import LIMITS

REPORTER = "tests.security.environment_reporter"
SECRETS = {
    "EDGEFLEET_KEY_PASSPHRASE": "the passphrase of the signing keys",
    f"EDGEFLEET_{secrets.token_hex(4).upper()}": secrets.token_urlsafe(16),
    "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(16),
}
JOB_LIMITS = JobLimits(memory_bytes=1 << 30, cpu_s=30, wall_s=60.0)


@pytest.fixture(autouse=True)
def secrets_in_the_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")


def assert_minimal(environment: dict[str, str]) -> None:
    leaked = sorted(name for name in SECRETS if name in environment)
    assert not leaked, leaked
    assert not set(SECRETS.values()) & set(environment.values())
    # What the child needs to run is still there.
    assert environment["PATH"]
    assert environment["LC_ALL"] == "C.UTF-8"


def test_a_converter_job_does_not_inherit_the_key_passphrase(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The real bootstrap with its limits; only the module it runs is the reporter.
    monkeypatch.setattr(jobs, "_BOOTSTRAP", jobs._BOOTSTRAP.replace("'converters'", repr(REPORTER)))

    environment = run_converter(["report-environment"], JOB_LIMITS)

    assert_minimal(environment)
    assert environment["OMP_NUM_THREADS"] == "1"


def test_the_sandboxed_model_check_does_not_inherit_the_key_passphrase(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The real bootstrap, flags and limits; the reporter is found beside the tests.
    monkeypatch.setattr(sandbox, "_WORKER_MODULE", REPORTER)
    monkeypatch.setattr(sandbox, "_PACKAGE_ROOT", str(Path(__file__).resolve().parents[2]))

    returncode, stdout, stderr = asyncio.run(sandbox._run_worker(b"", LIMITS, "the reporter"))

    assert returncode == 0, stderr
    environment = json.loads(stdout)
    assert_minimal(environment)
    assert environment["OMP_NUM_THREADS"] == "1"
