"""Content-addressed artifacts: immutable, cacheable forever, resumable with Range."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import FileResponse

from .deps import Context, Device

router = APIRouter(tags=["artifacts"])

IMMUTABLE = "public, max-age=31536000, immutable"


@router.get(
    "/artifacts/sha256/{digest}",
    response_class=FileResponse,
    responses={206: {"description": "Partial content (Range)"}, 304: {"description": "Unchanged"}},
)
def get_artifact(
    digest: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")],
    request: Request,
    ctx: Context,
    _caller: Device,
) -> Response:
    """The bytes whose SHA-256 is ``digest``. The URL never changes meaning.

    Devices download with their own token (role ``device``), so this is the one route a
    device token opens.
    """
    stored = ctx.store.get(digest)
    etag = f'"sha256-{digest}"'
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return FileResponse(stored.path, media_type="application/octet-stream", headers=headers)
