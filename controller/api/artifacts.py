"""Content-addressed artifacts: immutable, cacheable forever, resumable with Range.

People's tokens (viewer and up) read any stored artifact. A device token reads only the
artifacts a release names (model files and check bundles); anything else, validation
sets included, answers 404 exactly as a digest the store does not hold, so a device
cannot even learn what else is stored.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import FileResponse

from ..errors import NotFoundError
from ..tokens import Role
from .deps import Context, DbSession, Device

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
    session: DbSession,
    caller: Device,
) -> Response:
    """The bytes whose SHA-256 is ``digest``. The URL never changes meaning.

    Devices download with their own token (role ``device``), so this is the one route a
    device token opens, and for a device only the artifacts of releases.
    """
    if caller.role is Role.DEVICE and not ctx.released_artifacts.names(session, digest):
        raise NotFoundError(f"no artifact sha256:{digest}")
    stored = ctx.store.get(digest)
    etag = f'"sha256-{digest}"'
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return FileResponse(stored.path, media_type="application/octet-stream", headers=headers)
