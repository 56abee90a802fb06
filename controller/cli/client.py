"""A small HTTP client for the controller's API, used by the operator CLI.

Transport errors and error answers become one ``ApiError`` with the server's reason.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx

from ..errors import ControllerError

__all__ = ["DEFAULT_URL", "ApiError", "ControllerClient"]

DEFAULT_URL = "http://127.0.0.1:8080"
# Quantization and release jobs run while the request waits.
JOB_TIMEOUT_S = 1800.0
UPLOAD_CHUNK_BYTES = 256 * 1024


class ApiError(ControllerError):
    """The controller refused a call, or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


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
    def __init__(self, base_url: str, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(30.0, read=JOB_TIMEOUT_S),
        )

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call ``path`` and return the decoded JSON answer, or raise ``ApiError``."""
        return self._call(method, path, **kwargs)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach the controller at {self._http.base_url}: {exc}") from exc
        if response.is_error:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(f"{response.status_code}: {detail}", response.status_code)
        return response.json()

    def push(
        self,
        name: str,
        model: Path,
        *,
        validation: Path | None,
        allow_signature_change: bool,
        on_progress: Callable[[int], None] = lambda _n: None,
    ) -> dict[str, Any]:
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
                answer: dict[str, Any] = self._call(
                    "POST", f"/api/v1/models/{name}/versions", files=files, data=data
                )
                return answer
            finally:
                if validation_handle is not None:
                    validation_handle.close()

    def models(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self._call("GET", "/api/v1/models")
        return answer

    def versions(self, name: str) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self._call("GET", f"/api/v1/models/{name}/versions")
        return answer

    def version(self, name: str, version: int) -> dict[str, Any]:
        answer: dict[str, Any] = self._call("GET", f"/api/v1/models/{name}/versions/{version}")
        return answer

    def quantize(self, name: str, version: int, mode: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._call(
            "POST", f"/api/v1/models/{name}/versions/{version}/variants", json={"mode": mode}
        )
        return answer

    def release(self, name: str, version: int) -> dict[str, Any]:
        answer: dict[str, Any] = self._call(
            "POST", f"/api/v1/models/{name}/versions/{version}/release"
        )
        return answer
