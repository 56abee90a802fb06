"""One error for every way a call fails, and the translation of an answer into it."""

from __future__ import annotations

from typing import Any

import httpx

__all__ = ["ApiError", "answer_of", "unreachable"]

# Enough of an error page to say what went wrong, never a whole one in a log line.
MAX_DETAIL_CHARS = 500


class ApiError(Exception):
    """The controller refused a call (``status`` is its HTTP status) or could not be
    reached (``status`` is None). The message is the server's reason."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def unreachable(base_url: httpx.URL, exc: httpx.HTTPError) -> ApiError:
    hint = ""
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
        hint = (
            " (a controller with its own CA: set SSL_CERT_FILE to the CA's certificate, "
            "<data dir>/tls/ca.crt on the controller host)"
        )
    return ApiError(f"cannot reach the controller at {base_url}: {exc}{hint}")


def answer_of(response: httpx.Response) -> Any:
    """The decoded JSON answer; ``ApiError`` with the server's ``detail`` for a 4xx/5xx."""
    if response.is_error:
        try:
            detail = response.json().get("detail", response.text)
        except (ValueError, AttributeError):  # not JSON, or JSON but not an object
            detail = response.text
        raise ApiError(
            f"{response.status_code}: {str(detail)[:MAX_DETAIL_CHARS]}", response.status_code
        )
    return response.json()
