"""The agent as a real subprocess (``python -m agent run``), restartable and killable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.brokers import BrokerEndpoint, free_port

STOP_TIMEOUT_S = 30.0
# The model most tests deploy (tests/agent/e2e/models.py's affine models).
MODEL = "affine"


def toml_value(value: Any) -> str:
    """A TOML value: JSON's form for scalars and strings, an inline table for a dict."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {json.dumps(item)}" for key, item in value.items()) + "}"
    return json.dumps(value)


class AgentProcess:
    def __init__(
        self,
        directory: Path,
        *,
        device_id: str,
        broker: BrokerEndpoint,
        prefix: str,
        controller_url: str,
        trust_root: bytes,
    ) -> None:
        self.directory = directory
        self.device_id = device_id
        directory.mkdir(parents=True, exist_ok=True)
        self.data_dir = directory / "data"
        self.trust_root_file = directory / "trust-root.json"
        self.trust_root_file.write_bytes(trust_root)
        self.base: dict[str, Any] = {
            "device_id": device_id,
            "data_dir": str(self.data_dir),
            "trust_root": str(self.trust_root_file),
            "broker_url": broker.url,
            "topic_prefix": prefix,
            "controller_url": controller_url,
            "download_min_deadline_s": 20.0,
            "download_read_timeout_s": 5.0,
            "sandbox_wall_s": 60.0,
            "shutdown_timeout_s": 5.0,
            "inference_port": free_port(),
            "stats_window_s": 1.0,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "agent.log"

    def start(self, **overrides: Any) -> None:
        config = self.directory / "agent.toml"
        settings = {**self.base, **overrides}
        config.write_text(
            "".join(
                f"{key} = {toml_value(value)}\n"
                for key, value in settings.items()
                if value is not None
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(config)],
                env=env,
                stdout=log,
                stderr=log,
            )

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.base['inference_port']}"

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_TIMEOUT_S)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def journal(self, model: str = MODEL) -> dict[str, Any] | None:
        path = self.data_dir / "updates" / model / "journal.json"
        try:
            value: dict[str, Any] = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return value

    def wait_for_journal_state(
        self, state: str, sequence: int, timeout_s: float = 60.0, *, model: str = MODEL
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            journal = self.journal(model)
            if journal and (journal["state"], journal["deployment_sequence"]) == (state, sequence):
                return
            if not self.alive():
                raise AssertionError(f"agent exited: {self.log.read_text()[-3000:]}")
            time.sleep(0.02)
        raise AssertionError(f"journal never reached {state}: {self.journal(model)}")

    def current_model_dir(self, model: str = MODEL) -> Path | None:
        link = self.data_dir / "store" / "slots" / model / "current"
        return link.resolve() if link.is_symlink() else None

    def trust_file_bytes(self) -> bytes:
        return (self.data_dir / "trust.json").read_bytes()
