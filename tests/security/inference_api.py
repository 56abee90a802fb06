"""The device's local inference API as an attacker on the device meets it: a real
``edgefleet-agent serve-local`` process on a free loopback port, serving the digits model
(input ``input`` FP32 [N, 64]), with its resident memory read from /proc."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

STOP_TIMEOUT_S = 30.0
MODEL_NAME = "digits"
SERVE_OPTIONS = ("--port", "0", "--name", MODEL_NAME)
_URL_LINE = re.compile(r"serving (http://127\.0\.0\.1:(\d+))/v2/models/")


@dataclass(frozen=True)
class LocalApi:
    url: str
    port: int
    pid: int

    def status_bytes(self, field: str) -> int:
        """A size from /proc/<pid>/status: ``VmRSS`` now, ``VmHWM`` its peak so far."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(rf"^{field}:\s+(\d+) kB$", status, re.MULTILINE)
        assert match, status
        return int(match.group(1)) * 1024


@contextmanager
def serve_local(model: Path) -> Iterator[LocalApi]:
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "serve-local", str(model), *SERVE_OPTIONS],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once the API listens
        match = _URL_LINE.search(line)
        assert match, line
        yield LocalApi(match.group(1), int(match.group(2)), process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
