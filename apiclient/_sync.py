"""``ControllerClient``: the API from a command line or a script, one call at a time."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx

from ._errors import ApiError, answer_of, unreachable

__all__ = ["DEFAULT_URL", "ControllerClient"]

DEFAULT_URL = "http://127.0.0.1:8080"
CONNECT_TIMEOUT_S = 30.0
# The longest a client waits for a quantization or release (a request or a job).
JOB_TIMEOUT_S = 1800.0
# How often a waiting client asks how its job is doing.
JOB_POLL_S = 0.5
UPLOAD_CHUNK_BYTES = 256 * 1024


class _ProgressReader:
    """A file wrapper that reports how many bytes httpx has read for the upload."""

    def __init__(self, handle: IO[bytes], on_read: Callable[[int], None]) -> None:
        self._handle = handle
        self._on_read = on_read

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(UPLOAD_CHUNK_BYTES if size < 0 else size)
        self._on_read(len(chunk))
        return chunk


class ControllerClient:
    """``verify``: what an ``https`` controller must prove, e.g. a context trusting only
    its CA; True: the system's CAs, or the file ``SSL_CERT_FILE`` names."""

    def __init__(
        self, base_url: str, token: str | None, *, verify: ssl.SSLContext | bool = True
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(CONNECT_TIMEOUT_S, read=JOB_TIMEOUT_S),
            verify=verify,
        )

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call ``path`` and return the decoded JSON answer, or raise ``ApiError``."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise unreachable(self._http.base_url, exc) from exc
        return answer_of(response)

    def download(self, path: str, *, max_bytes: int) -> bytes:
        """The raw bytes at ``path`` (at most ``max_bytes``), or raise ``ApiError``."""
        try:
            with self._http.stream("GET", path) as response:
                if response.is_error:
                    response.read()
                    answer_of(response)
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise ApiError(f"{path} answered over {max_bytes} bytes")
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise unreachable(self._http.base_url, exc) from exc
        return b"".join(chunks)

    def push(
        self,
        name: str,
        model: Path,
        *,
        validation: Path | None = None,
        allow_signature_change: bool = False,
        channel: str | None = None,
        on_progress: Callable[[int], None] = lambda _n: None,
    ) -> dict[str, Any]:
        """Upload a model (and its validation set), streamed from disk; the new version.

        With ``channel``, the version goes into that channel's pipeline."""
        with model.open("rb") as model_handle:
            files: dict[str, Any] = {
                "model": (model.name, _ProgressReader(model_handle, on_progress))
            }
            validation_handle = validation.open("rb") if validation else None
            try:
                if validation is not None and validation_handle is not None:
                    files["validation"] = (
                        validation.name,
                        _ProgressReader(validation_handle, on_progress),
                    )
                data = {"allow_signature_change": "true" if allow_signature_change else "false"}
                if channel is not None:
                    data["channel"] = channel
                answer: dict[str, Any] = self.request(
                    "POST", f"/api/v1/models/{name}/versions", files=files, data=data
                )
                return answer
            finally:
                if validation_handle is not None:
                    validation_handle.close()

    def models(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self.request("GET", "/api/v1/models")
        return answer

    def lineage(self, name: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("GET", f"/api/v1/models/{name}/lineage")
        return answer

    def versions(self, name: str) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self.request("GET", f"/api/v1/models/{name}/versions")
        return answer

    def version(self, name: str, version: int) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("GET", f"/api/v1/models/{name}/versions/{version}")
        return answer

    def quantize(
        self, name: str, version: int, mode: str, *, max_latency_ratio: float | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"mode": mode}
        if max_latency_ratio is not None:
            body["max_latency_ratio"] = max_latency_ratio
        answer: dict[str, Any] = self.request(
            "POST", f"/api/v1/models/{name}/versions/{version}/variants", json=body
        )
        return answer

    def release(self, name: str, version: int) -> dict[str, Any]:
        answer: dict[str, Any] = self.request(
            "POST", f"/api/v1/models/{name}/versions/{version}/release"
        )
        return answer

    def queue_job(self, body: dict[str, Any]) -> dict[str, Any]:
        """Queue a variant or release job; the answer is the job, at once."""
        answer: dict[str, Any] = self.request("POST", "/api/v1/jobs", json=body)
        return answer

    def job(self, job_id: int) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("GET", f"/api/v1/jobs/{job_id}")
        return answer

    def wait_job(
        self,
        job_id: int,
        *,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        poll_s: float = JOB_POLL_S,
        timeout_s: float = JOB_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Poll a job until it ends; its result, or ``ApiError`` with the status the
        request would have had when it failed, or after ``timeout_s`` (no worker ran it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if time.monotonic() > deadline and job["status"] in ("queued", "running"):
                raise ApiError(
                    f"job {job_id} is still {job['status']} after {timeout_s:g} s "
                    f"({job['progress']}); follow it at GET /api/v1/jobs/{job_id}"
                )
            if on_progress is not None:
                on_progress(job)
            if job["status"] == "succeeded":
                result: dict[str, Any] = job["result"]
                return result
            if job["status"] == "failed":
                raise ApiError(f"job {job_id} failed: {job['error']}", job["error_status"])
            time.sleep(poll_s)

    def create_rollout(self, body: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("POST", "/api/v1/rollouts", json=body)
        return answer

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("GET", f"/api/v1/rollouts/{rollout_id}")
        return answer
