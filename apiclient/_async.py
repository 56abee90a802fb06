"""``AsyncControllerClient``: the API from an event loop that runs many agents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from ._errors import answer_of, unreachable

__all__ = ["AsyncControllerClient"]

TIMEOUT_S = 120.0
MAX_CONNECTIONS = 16
GET_ATTEMPTS = 3


class AsyncControllerClient:
    def __init__(self, base_url: str, token: str) -> None:
        self.url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=TIMEOUT_S,
            limits=httpx.Limits(max_connections=MAX_CONNECTIONS),
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call ``path`` and return the decoded JSON answer, or raise ``ApiError``."""
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
                    raise unreachable(self._http.base_url, exc) from exc
            except httpx.HTTPError as exc:
                raise unreachable(self._http.base_url, exc) from exc
        return answer_of(response)

    async def enrollment_token(self, labels: dict[str, str], device_id: str) -> str:
        answer = await self.request(
            "POST", "/api/v1/enrollment-tokens", json={"labels": labels, "device_id": device_id}
        )
        return str(answer["token"])

    async def push(
        self, name: str, model: Path, validation: Path | None = None, **fields: str
    ) -> dict[str, Any]:
        files = {"model": (model.name, model.read_bytes())}
        if validation is not None:
            files["validation"] = (validation.name, validation.read_bytes())
        pushed: dict[str, Any] = await self.request(
            "POST", f"/api/v1/models/{name}/versions", files=files, data=fields
        )
        return pushed

    async def variant(self, name: str, version: int, mode: str) -> dict[str, Any]:
        variant: dict[str, Any] = await self.request(
            "POST", f"/api/v1/models/{name}/versions/{version}/variants", json={"mode": mode}
        )
        return variant

    async def release(self, name: str, version: int) -> str:
        await self.request("POST", f"/api/v1/models/{name}/versions/{version}/release")
        return f"{name}:{version}"

    async def create_rollout(self, body: dict[str, Any]) -> str:
        created = await self.request("POST", "/api/v1/rollouts", json=body)
        return str(created["id"])

    async def rollout(self, rollout_id: str) -> dict[str, Any]:
        detail: dict[str, Any] = await self.request("GET", f"/api/v1/rollouts/{rollout_id}")
        return detail
