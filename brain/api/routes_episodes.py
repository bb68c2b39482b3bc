"""Episodes: list, start, stop, delete, export, and download an export archive."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from brain.api.auth import ctx_of, require_client, require_client_or_ticket
from brain.api.models import EpisodeId, EpisodeStartRequest, ExportRequest

router = APIRouter(tags=["episodes"])
ERR: dict[int | str, dict[str, Any]] = {401: {"description": "Not paired"},
                                        404: {"description": "No such episode"},
                                        409: {"description": "Refused in the current state"}}


def _refused(e: Exception) -> HTTPException:
    return HTTPException(409, str(e))


def _missing(e: KeyError) -> HTTPException:
    return HTTPException(404, str(e.args[0]) if e.args else "no such episode")


@router.get("/episodes", responses=ERR)
async def episodes_list(request: Request, client: str = Depends(require_client)) -> dict:
    return {"episodes": ctx_of(request).service.episodes_list()}


@router.post("/episodes/start", responses=ERR)
async def episodes_start(body: EpisodeStartRequest, request: Request,
                         client: str = Depends(require_client)) -> dict[str, Any]:
    try:
        return ctx_of(request).service.episodes_start(body.operator, body.language_instruction)
    except ValueError as e:
        raise _refused(e) from None


@router.post("/episodes/stop", responses=ERR)
async def episodes_stop(request: Request, client: str = Depends(require_client)) -> dict:
    try:
        return ctx_of(request).service.episodes_stop()
    except ValueError as e:
        raise _refused(e) from None


@router.delete("/episodes/{episode_id}", responses=ERR)
async def episodes_delete(episode_id: Annotated[EpisodeId, Path()], request: Request,
                          client: str = Depends(require_client)) -> dict[str, Any]:
    try:
        ctx_of(request).service.episodes_delete(episode_id)
    except KeyError as e:
        raise _missing(e) from None
    except ValueError as e:
        raise _refused(e) from None
    return {"deleted": episode_id}


@router.post("/episodes/export", responses=ERR)
async def episodes_export(body: ExportRequest, request: Request,
                          client: str = Depends(require_client)) -> dict[str, Any]:
    """Build a tar archive (in a worker thread) and return where to download it."""
    ctx = ctx_of(request)
    try:
        path = await run_in_threadpool(ctx.service.episodes_export, body.ids, body.anonymize)
    except KeyError as e:
        raise _missing(e) from None
    except ValueError as e:
        raise _refused(e) from None
    # Only archives the service handed us can be downloaded: the name is a key, not a path.
    ctx.exports[path.name] = path
    return {"name": path.name, "size": path.stat().st_size,
            "url": f"/api/v1/exports/{path.name}"}


@router.get("/exports/{name}", response_class=FileResponse, responses={
    **ERR, 200: {"content": {"application/x-tar": {}}, "description": "The archive"}})
async def export_download(name: Annotated[str, Path(max_length=255)], request: Request,
                          client: str = Depends(require_client_or_ticket)) -> FileResponse:
    path = ctx_of(request).exports.get(name)
    if path is None or not path.is_file():
        raise HTTPException(404, f"no export named {name!r}")
    return FileResponse(path, media_type="application/x-tar", filename=name)
