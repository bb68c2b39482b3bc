"""Downloading an export archive (the one file route; listing, making and deleting exports
are commands)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import FileResponse

from brain.api.auth import ctx_of, require_client_or_ticket

router = APIRouter(tags=["exports"])


@router.get("/exports/{name}", response_class=FileResponse, responses={
    401: {"description": "Not paired"}, 404: {"description": "No such export"},
    200: {"content": {"application/x-tar": {}}, "description": "The archive"}})
async def export_download(name: Annotated[str, Path(max_length=255)], request: Request,
                          client: str = Depends(require_client_or_ticket)) -> FileResponse:
    """Download an archive made by POST /episodes/export (a ticket works: browsers follow a
    plain link). The name is looked up, never used as a path."""
    path = ctx_of(request).service.export_path(name)
    return FileResponse(path, media_type="application/x-tar", filename=name)
