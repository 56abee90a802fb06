"""A fleet per test: a controller process, enrolled agents, models pushed through the API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simulator.controller_process import ControllerProcess
from tests.agent.e2e.models import affine_model, log1p_model
from tests.brokers import BrokerEndpoint

from .harness import Api, FleetAgent

MODEL = "affine"
# Short windows so a test takes seconds; a generous latency ratio, and a rise of 10 ms
# before it counts, because 20 agents, a controller and a broker share 2 cores here (with
# other tests beside them): a 0.12 ms model read 1.6 ms at p95 of a few dozen requests,
# and a good model must not fail on noise. Latency gates are tested on their numbers.
# Drift limits stay at their defaults: devices judge drift only from 200 requests, and the
# controller reads one PSI over every window's pooled counts, so small windows are no
# longer noise (a good model was once rolled back at PSI 0.30 when they were).
PROBATION = {
    "window_s": 3.0,
    "min_requests": 10,
    "max_extension_s": 20.0,
    "max_p95_latency_ratio": 4.0,
    "min_p95_latency_increase_ms": 10.0,
}
GATES = {
    "max_p95_latency_ratio": 4.0,
    "min_p95_latency_increase_ms": 10.0,
    "min_health_requests": 20,
}
WAIT_S = 240.0


@dataclass
class ModelFiles:
    good_v1: Path
    good_v2: Path
    nan_live: Path
    nan_live_validation: Path


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    directory = tmp_path_factory.mktemp("fleet-models")
    validation = directory / "log1p-validation.npz"
    # Golden inputs from here are all >= 0: log(x + 1) is finite on them, not on live ones.
    rng = np.random.default_rng(7)
    np.savez(validation, x=rng.uniform(0.0, 7.0, size=(32, 4)).astype(np.float32))
    return ModelFiles(
        good_v1=affine_model(directory / "affine-1.onnx", 1.0),
        good_v2=affine_model(directory / "affine-2.onnx", 2.0),
        nan_live=log1p_model(directory / "log1p.onnx"),
        nan_live_validation=validation,
    )


@dataclass
class Fleet:
    """One or more controllers sharing a database and a broker, and their devices."""

    directory: Path
    controllers: list[ControllerProcess]
    api: Api
    api_token: str
    agents: list[FleetAgent] = field(default_factory=list)

    @property
    def controller(self) -> ControllerProcess:
        return self.controllers[0]

    def enroll(self, count: int, *, labels: str = "site=berlin", prefix: str = "cam") -> None:
        first = len(self.agents)
        for index in range(first, first + count):
            answer = self.api.call(
                "POST", "/api/v1/enrollment-tokens", json={"labels": _labels(labels)}
            )
            agent = FleetAgent(self.directory / f"agent-{index}", f"{prefix}-{index:03d}")
            # A controller with a CA names it: the agent pins it, as the printed command does.
            agent.enroll(self.controller.url, answer["token"], ca_sha256=answer.get("ca_sha256"))
            self.agents.append(agent)

    def start_agents(self, agents: list[FleetAgent] | None = None) -> None:
        chosen = self.agents if agents is None else agents
        for agent in chosen:
            agent.start()
        self.wait_online({a.device_id for a in chosen})

    def wait_online(self, device_ids: set[str], timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            online = {d["id"] for d in self.api.call("GET", "/api/v1/devices?online=true")}
            if device_ids <= online:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"offline: {sorted(device_ids - online)}\n{self.context()}")
            time.sleep(0.5)

    def roll_out(
        self, release: str, *, final: tuple[str, ...] = ("completed",), **fields: Any
    ) -> dict[str, Any]:
        body = {"probation": PROBATION, "gates": GATES, "soak": "1s", **fields}
        rollout_id = self.api.rollout(release, **body)
        return self.api.wait_rollout(rollout_id, final, WAIT_S, self.context)

    def install_baseline(self, model_files: ModelFiles) -> str:
        """Every device runs affine:1 and serves traffic: the fleet before a rollout."""
        version = self.api.push_and_release(MODEL, model_files.good_v1)
        self.roll_out(f"{MODEL}:{version}", waves="100%", soak="0s")
        for agent in self.agents:
            agent.start_traffic(MODEL)
        return f"{MODEL}:{version}"

    def context(self) -> str:
        parts = [f"--- controller {c.http_port}\n{c.log_tail()}" for c in self.controllers]
        parts += [f"--- {a.device_id}\n{a.log_tail(1500)}" for a in self.agents[:3]]
        # Where every other agent stands, by its last two log lines: the one a failed wait
        # is about is rarely among the first three.
        parts += [f"--- {a.device_id}: {a.log_lines(2)}" for a in self.agents[3:]]
        return "\n".join(parts)

    def close(self) -> None:
        for agent in self.agents:
            agent.stop_traffic()
        for agent in self.agents:
            agent.stop()
        for controller in self.controllers:
            controller.stop()


def _labels(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split(",") if part)


def make_fleet(
    directory: Path,
    broker: BrokerEndpoint,
    *,
    database_url: str = "",
    controllers: int = 1,
    shared_group: str = "",
    settings: dict[str, str] | None = None,
) -> Fleet:
    processes = []
    data_dir = directory / "controller-data"
    for index in range(controllers):
        process = ControllerProcess(
            directory / f"controller-{index}",
            broker=broker.url,
            database_url=database_url,
            controller_id=f"c{index}",
            shared_group=shared_group,
            data_dir=data_dir,  # replicas share keys and artifacts (a shared volume)
            settings={
                "EDGEFLEET_RECONCILE_INTERVAL_S": "5",
                "EDGEFLEET_INGEST_FLUSH_S": "0.1",
                **(settings or {}),
            },
        )
        process.start()
        processes.append(process)
    token = processes[0].create_token("admin")
    return Fleet(directory, processes, Api(processes[0].url, token), token)


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: BrokerEndpoint) -> Iterator[Fleet]:
    running = make_fleet(tmp_path, mosquitto)
    try:
        yield running
    finally:
        running.close()
