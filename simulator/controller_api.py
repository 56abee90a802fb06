"""The controller as the simulator reaches it: its HTTP API, with an operator token.

The simulator never imports the controller (ARCHITECTURE.md §2): it enrolls devices,
starts rollouts and reads their progress exactly as an operator's script would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

__all__ = ["ControllerApi", "ControllerApiError"]

TIMEOUT_S = 120.0
GET_ATTEMPTS = 3


class ControllerApiError(Exception):
    """The controller refused or failed a call; the message holds its answer."""


class ControllerApi:
    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=TIMEOUT_S,
            limits=httpx.Limits(max_connections=16),
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        # A GET is safe to send again. The controller closes idle keep-alive connections
        # after 5 s; when thousands of agents keep this event loop busy, a poll can reuse
        # one the server has just closed ("disconnected without sending a response").
        attempts = GET_ATTEMPTS if method == "GET" else 1
        for attempt in range(1, attempts + 1):
            try:
                response = await self._http.request(method, path, **kwargs)
                break
            except httpx.TransportError as exc:
                if attempt == attempts:
                    raise ControllerApiError(f"{method} {path}: {exc!r}") from exc
            except httpx.HTTPError as exc:
                raise ControllerApiError(f"{method} {path}: {exc!r}") from exc
        if response.status_code >= 300:
            raise ControllerApiError(
                f"{method} {path}: {response.status_code} {response.text[:500]}"
            )
        return response.json()

    async def enrollment_token(self, labels: dict[str, str], device_id: str) -> str:
        answer = await self.call(
            "POST", "/api/v1/enrollment-tokens", json={"labels": labels, "device_id": device_id}
        )
        return str(answer["token"])

    async def push(
        self, name: str, model: Path, validation: Path | None = None, **fields: str
    ) -> dict[str, Any]:
        files = {"model": (model.name, model.read_bytes())}
        if validation is not None:
            files["validation"] = (validation.name, validation.read_bytes())
        pushed: dict[str, Any] = await self.call(
            "POST", f"/api/v1/models/{name}/versions", files=files, data=fields
        )
        return pushed

    async def variant(self, name: str, version: int, mode: str) -> dict[str, Any]:
        variant: dict[str, Any] = await self.call(
            "POST", f"/api/v1/models/{name}/versions/{version}/variants", json={"mode": mode}
        )
        return variant

    async def release(self, name: str, version: int) -> str:
        await self.call("POST", f"/api/v1/models/{name}/versions/{version}/release")
        return f"{name}:{version}"

    async def create_rollout(self, body: dict[str, Any]) -> str:
        created = await self.call("POST", "/api/v1/rollouts", json=body)
        return str(created["id"])

    async def rollout(self, rollout_id: str) -> dict[str, Any]:
        detail: dict[str, Any] = await self.call("GET", f"/api/v1/rollouts/{rollout_id}")
        return detail
