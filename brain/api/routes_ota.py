"""Uploading a bundle (POST /api/v1/ota): the one OTA route that is not a command, because its
body is the bundle itself. It is streamed to disk as it arrives, never held in memory, and cut
off at `ota.max_bundle_bytes`; then it goes the same way as `ota.install`."""

from __future__ import annotations

import os
import sys
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from brain.api.auth import ctx_of, require_client

UPLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Not paired"}, 409: {"description": "An install is running"},
    413: {"description": "Larger than ota.max_bundle_bytes"},
    422: {"description": "The bundle failed verification; `reason` names the check"}}


def too_large(max_bytes: int) -> JSONResponse:
    return JSONResponse({"detail": f"too-large: the bundle is larger than {max_bytes} bytes "
                                   "(ota.max_bundle_bytes)", "kind": "rejected",
                         "reason": "too-large"}, status_code=413,
                        headers={"Connection": "close"})


def upload_router(max_bytes: int) -> APIRouter:
    router = APIRouter(tags=["ota"])

    # The framework's own cap is lifted here: this route counts the bytes as they stream in
    # and stops at `max_bytes` itself, answering with the reason.
    @router.post("/ota", responses=UPLOAD_RESPONSES, max_body_size=sys.maxsize,
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/octet-stream": {"schema": {"type": "string",
                                                             "format": "binary"}}}}})
    async def ota_upload(request: Request, client: str = Depends(require_client)) -> Any:
        """Upload a signed bundle as the request body; verified, staged and trialled like
        `ota.install`. Poll GET /api/v1/ota for the trial's outcome."""
        from brain.ota.manager import OtaError

        svc = ctx_of(request).service
        assert svc.ota is not None  # this router is mounted only with OTA on
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            return too_large(max_bytes)
        expected = int(declared) if declared is not None and declared.isdigit() else None
        try:
            with svc.ota.transfer(expected):  # one at a time, with room on the disk
                path = svc.cfg.layout.model / "downloads" / f"upload-{os.urandom(6).hex()}.part"
                received = 0
                try:
                    with open(path, "wb") as fh:
                        async for chunk in request.stream():
                            received += len(chunk)
                            if received > max_bytes:
                                path.unlink()
                                return too_large(max_bytes)
                            fh.write(chunk)
                except BaseException:
                    path.unlink(missing_ok=True)
                    raise
        except OtaError as e:
            return JSONResponse({"detail": str(e), "kind": "refused"}, status_code=409,
                                headers={"Connection": "close"})
        return await run_in_threadpool(svc.ota_upload, path)

    return router
