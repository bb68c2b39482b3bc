"""The routes that are not commands: health and pairing (public) and tickets."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request

from brain.api.auth import ctx_of, require_client
from brain.api.models import PairRequest
from brain.api.pairing import CodeRejected, LockedOut, StoreError

router = APIRouter()
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {401: {"description": "Not paired"}}


@router.get("/health", tags=["public"])
async def health(request: Request) -> dict[str, Any]:
    """Liveness and identity; needs no token."""
    ctx = ctx_of(request)
    ident = ctx.service.identity()
    return {"ok": True, "id": ident.get("id", ""), "name": ident.get("name", ""),
            "version": ident.get("version", ""), "tls": ctx.tls,
            "paired": ctx.pairing.paired_count > 0}


@router.post("/pair", tags=["public"],
             responses={403: {"description": "Code wrong, expired or retired"},
                        429: {"description": "Locked out after failed codes"},
                        507: {"description": "The robot's disk is full"}})
async def pair(body: PairRequest, request: Request) -> dict[str, Any]:
    """Exchange the code shown by `brain pair` for a bearer token; pin `fingerprint`."""
    ctx = ctx_of(request)
    remote = request.client.host if request.client else "unknown"
    try:
        token = ctx.pairing.pair(body.code, body.client_name, remote)
    except LockedOut as e:
        raise HTTPException(429, str(e),
                            headers={"Retry-After": str(int(e.retry_after_s) + 1)}) from None
    except CodeRejected as e:
        raise HTTPException(403, str(e)) from None
    except StoreError as e:
        raise HTTPException(507 if e.no_space else 503, str(e)) from None
    ident = ctx.service.identity()
    return {"token": token, "token_type": "bearer", "client_name": body.client_name,
            "fingerprint": ctx.fingerprint, "id": ident.get("id", ""),
            "name": ident.get("name", "")}


@router.post("/ticket", responses=AUTH_RESPONSES)
async def ticket(request: Request, client: str = Depends(require_client)) -> dict[str, Any]:
    """A short-lived ticket for `?ticket=` on the WebSocket, MJPEG, SSE and download routes
    (browsers cannot set an Authorization header on those)."""
    return ctx_of(request).pairing.issue_ticket(client)
