"""The whole system as an operator runs it: controller processes, enrolled agents, traffic.

Everything is real: ``edgefleet controller serve`` (the simulator's ``ControllerProcess``)
and ``edgefleet-agent run`` as subprocesses, a Mosquitto of the test's own, SQLite or
PostgreSQL, ONNX models pushed and released through the API, enrollment through the API
and ``edgefleet-agent enroll``, and applications calling each agent's local inference API
while models change.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from apiclient import ControllerClient
from tests.brokers import free_port

STOP_TIMEOUT_S = 30.0


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update(extra)
    return env


def active_version_of(device: dict[str, Any], model: str) -> int | None:
    """The version of ``model`` in a device's API form (``models`` lists each model)."""
    for entry in device["models"]:
        if entry["model"] == model:
            version: int | None = entry["active_version"]
            return version
    return None


class Api:
    """The controller's HTTP API as an operator's script uses it (``apiclient``), with the
    waits a test needs."""

    def __init__(self, url: str, token: str, *, verify: ssl.SSLContext | bool = True) -> None:
        self.client = ControllerClient(url, token, verify=verify)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.client.request(method, path, **kwargs)

    def push_and_release(self, name: str, model: Path, validation: Path | None = None) -> int:
        files = {"model": (model.name, model.read_bytes())}
        if validation is not None:
            files["validation"] = (validation.name, validation.read_bytes())
        version = int(self.call("POST", f"/api/v1/models/{name}/versions", files=files)["version"])
        self.client.release(name, version)
        return version

    def rollout(self, release: str, **fields: Any) -> str:
        body = {"release": release, **fields}
        rollout_id: str = self.client.create_rollout(body)["id"]
        return rollout_id

    def rollout_status(self, rollout_id: str) -> dict[str, Any]:
        return self.client.rollout(rollout_id)

    def device(self, device_id: str) -> dict[str, Any]:
        detail: dict[str, Any] = self.call("GET", f"/api/v1/devices/{device_id}")
        return detail

    def active_version(self, device_id: str, model: str) -> int | None:
        """The version of ``model`` the device reports serving, if any."""
        return active_version_of(self.device(device_id), model)

    def wait_rollout(
        self,
        rollout_id: str,
        statuses: tuple[str, ...],
        timeout_s: float,
        context: Callable[[], str],
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        status = self.rollout_status(rollout_id)
        while status["status"] not in statuses:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"rollout {rollout_id} is {status['status']}, not {statuses}: "
                    f"{status['waves']} {status['notes']} {status['gates']}\n{context()}"
                )
            time.sleep(0.5)
            status = self.rollout_status(rollout_id)
        return status


@dataclass
class Traffic:
    """An application calling one agent's local API.

    By default with 4-float rows like the affine models' reference data; with ``bodies``
    (pre-encoded JSON requests, e.g. camera frames) it sends those in turn.
    """

    url: str
    model: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    interval_s: float = 0.1
    bodies: list[bytes] = field(default_factory=list)

    def _next_body(self, rng: np.random.Generator, turn: int) -> bytes:
        if self.bodies:
            return self.bodies[turn % len(self.bodies)]
        row = rng.standard_normal(4).astype(np.float32).tolist()
        body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": row}]}
        return json.dumps(body).encode()

    def run(self) -> None:
        rng = np.random.default_rng(abs(hash(self.url)) % 2**32)
        headers = {"Content-Type": "application/json"}
        url = f"{self.url}/v2/models/{self.model}/infer"
        with httpx.Client(timeout=30) as client:
            turn = 0
            while not self.stop.is_set():
                body = self._next_body(rng, turn)
                turn += 1
                try:
                    response = client.post(url, content=body, headers=headers)
                except httpx.HTTPError:
                    time.sleep(0.2)  # the agent is not serving yet, or restarting
                    continue
                if response.status_code == 200:
                    self.ok += 1
                elif response.status_code != 404 or self.ok:  # 404 before: no model yet
                    self.failures.append(f"{response.status_code}: {response.text[:200]}")
                time.sleep(self.interval_s)


class FleetAgent:
    """A device: enrolled through the controller, then ``edgefleet-agent run``."""

    def __init__(self, directory: Path, device_id: str) -> None:
        self.directory = directory
        self.device_id = device_id
        self.inference_port = free_port()
        self.log = directory / "agent.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.traffic: Traffic | None = None  # the last started
        self.traffics: dict[str, Traffic] = {}  # by model
        self._traffic_threads: list[threading.Thread] = []

    def enroll(self, controller_url: str, token: str, *, ca_sha256: str | None = None) -> None:
        """``edgefleet-agent enroll``; with ``ca_sha256`` pinning the controller's CA."""
        self.directory.mkdir(parents=True, exist_ok=True)
        result = self.run_enroll(controller_url, token, ca_sha256=ca_sha256)
        assert result.returncode == 0, result.stdout + result.stderr

    def run_enroll(
        self, controller_url: str, token: str, *, ca_sha256: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``edgefleet-agent enroll`` as it is, whatever it answers."""
        pin = ["--ca-sha256", ca_sha256] if ca_sha256 is not None else []
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "agent",
                "enroll",
                "--controller",
                controller_url,
                "--token",
                token,
                "--data-dir",
                str(self.directory),
                "--device-id",
                self.device_id,
                *pin,
            ],
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start(self) -> None:
        env = _clean_env(
            EDGEFLEET_AGENT_INFERENCE_PORT=str(self.inference_port),
            EDGEFLEET_AGENT_STATS_WINDOW_S="1",
            # The agent's default: a controller killed mid-rollout took over 30 s to answer
            # again on a loaded machine, and a device's download gave up meanwhile.
            EDGEFLEET_AGENT_DOWNLOAD_MIN_DEADLINE_S="60",
            EDGEFLEET_AGENT_SANDBOX_WALL_S="90",
            EDGEFLEET_AGENT_SHUTDOWN_TIMEOUT_S="5",
            # Up to 20 agents share 2 cores here: one thread each, not every core each.
            EDGEFLEET_AGENT_INFERENCE_THREADS="1",
        )
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agent",
                    "run",
                    "--config",
                    str(self.directory / "agent.toml"),
                ],
                env=env,
                stdout=log,
                stderr=log,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def start_traffic(
        self, model: str, *, bodies: list[bytes] | None = None, interval_s: float = 0.1
    ) -> Traffic:
        self.traffic = Traffic(
            f"http://127.0.0.1:{self.inference_port}",
            model,
            interval_s=interval_s,
            bodies=bodies or [],
        )
        self.traffics[model] = self.traffic
        thread = threading.Thread(target=self.traffic.run, daemon=True)
        thread.start()
        self._traffic_threads.append(thread)
        return self.traffic

    def stop_traffic(self) -> None:
        for traffic in self.traffics.values():
            traffic.stop.set()
        for thread in self._traffic_threads:
            thread.join(timeout=30)
        self._traffic_threads.clear()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"

    def log_lines(self, count: int) -> str:
        """The last ``count`` lines of the log, on one line each."""
        return "\n".join(self.log_tail(20_000).splitlines()[-count:])
