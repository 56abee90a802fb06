"""A real ``mlflow server`` on a free loopback port: SQLite backend, local artifact root,
artifacts served through its proxy (the default), one worker, no job runner.

It takes 10-40 s to start on a loaded machine, so tests share one per session
(``mlflow_server`` in a conftest). Without MLflow installed the tests that need it skip,
or fail with ``CI=true`` (``tests.conftest.require_service``).

``HostileMlflow`` is the other kind: a server that speaks MLflow's routes but answers
what a test tells it to, for the attacks a real MLflow would never make.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.brokers import free_port
from tests.conftest import require_service

STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.25


@dataclass(frozen=True)
class MlflowServer:
    url: str
    workdir: Path
    log: Path


def mlflow_binary() -> str:
    """The ``mlflow`` command of this interpreter's environment, or a skip (or CI failure)."""
    candidate = Path(sys.executable).parent / "mlflow"
    binary = str(candidate) if candidate.exists() else shutil.which("mlflow")
    if binary is None:
        require_service("mlflow", "install the dev extra: pip install -e '.[dev]' (make venv)")
        raise AssertionError("unreachable")
    return binary


@contextmanager
def running_mlflow(workdir: Path) -> Iterator[MlflowServer]:
    """Start ``mlflow server`` in its own process group; stop the whole group at the end."""
    binary = mlflow_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "mlflow.log"
    env = {
        **os.environ,
        # The job runner forks half a dozen huey consumers: nothing here needs it.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }
    command = [
        binary,
        "server",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        str(workdir / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with log.open("wb") as out:
        # mlflow server runs uvicorn as a child: a group of its own, stopped as one.
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log)
        yield MlflowServer(url=url, workdir=workdir, log=log)
    finally:
        _stop(process)


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            require_service("mlflow server", f"it exited with {process.returncode}: {tail}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(POLL_INTERVAL_S)
    require_service("mlflow server", f"not healthy after {STARTUP_TIMEOUT_S:.0f} s (log: {log})")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the group, then SIGKILL to whatever of it is left after a while."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        process.poll()
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(POLL_INTERVAL_S)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait(STOP_TIMEOUT_S)


@dataclass
class FakeAnswer:
    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] | None = None
    # False: no Content-Length, the body ends when the connection closes (HTTP/1.0).
    declare_length: bool = True


class HostileMlflow:
    """An HTTP server answering MLflow's routes with whatever a test sets in ``answers``
    (route path -> answer; ``?path=`` listings are keyed ``LIST <path>``): a server that
    lies about sizes, names paths outside its artifacts, or redirects elsewhere."""

    def __init__(self) -> None:
        self.answers: dict[str, FakeAnswer] = {}
        self.requests: list[str] = []
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                hostile.requests.append(self.path)
                listed = parse_qs(parts.query).get("path")
                key = f"LIST {listed[0]}" if listed else parts.path
                answer = hostile.answers.get(key, FakeAnswer(404, b'{"error_code": "NOT_FOUND"}'))
                self.send_response(answer.status)
                for name, value in (answer.headers or {}).items():
                    self.send_header(name, value)
                if answer.declare_length:
                    self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, *_args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HostileMlflow:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(STOP_TIMEOUT_S)

    def serve_version(self, name: str, version: str, artifact_uri: str) -> None:
        """A READY version with no run, whose files are at ``artifact_uri``."""
        self.answers["/api/2.0/mlflow/model-versions/get"] = FakeAnswer(
            body=json.dumps(
                {"model_version": {"name": name, "version": version, "status": "READY"}}
            ).encode()
        )
        self.answers["/api/2.0/mlflow/model-versions/get-download-uri"] = FakeAnswer(
            body=json.dumps({"artifact_uri": artifact_uri}).encode()
        )

    def serve_listing(self, path: str, files: list[dict[str, object]]) -> None:
        self.answers[f"LIST {path}"] = FakeAnswer(body=json.dumps({"files": files}).encode())
