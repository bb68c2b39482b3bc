"""The FastAPI application: routes under /api/v1, error handling, the web page at /."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import brain
from brain.api import routes_core, routes_exports, routes_live, routes_training
from brain.api.auth import require_client
from brain.api.context import ApiContext
from brain.api.routes_commands import command_router
from brain.api.routes_ota import upload_router
from brain.commands import CommandError

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
MAX_BODY = 64 * 1024  # bytes; larger request bodies get 413
STATIC_DIR = Path(__file__).with_name("static")


def create_app(ctx: ApiContext, extra_routers: Iterable[tuple[APIRouter, str]] = ()) -> FastAPI:
    """Build the app. `extra_routers` are (router, sub-prefix) pairs, e.g. the /training and
    /ota routers; they are mounted under /api/v1 and every route in them requires a token."""
    # No Swagger UI page: it loads its script from a CDN into the origin whose localStorage
    # holds the bearer token. The OpenAPI document stays, for any viewer of the user's own.
    app = FastAPI(title="brain robot API", version=brain.__version__,
                  openapi_url=f"{API_PREFIX}/openapi.json", docs_url=None,
                  redoc_url=None, max_body_size=MAX_BODY)
    app.state.ctx = ctx
    app.include_router(routes_core.router, prefix=API_PREFIX)
    app.include_router(routes_live.router, prefix=API_PREFIX)
    app.include_router(routes_exports.router, prefix=API_PREFIX)
    app.include_router(routes_training.router, prefix=API_PREFIX)
    if ctx.service.ota is not None:
        app.include_router(upload_router(ctx.service.cfg.ota.max_bundle_bytes),
                           prefix=API_PREFIX)
    app.include_router(command_router(ctx.service.commands), prefix=API_PREFIX)
    for router, sub in extra_routers:
        app.include_router(router, prefix=API_PREFIX + sub, dependencies=[Depends(require_client)])

    @app.exception_handler(CommandError)
    async def refused(request: Request, exc: CommandError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "kind": exc.kind, **exc.fields},
                            status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        # A short reason and one log line; never the input itself (a NaN in it made FastAPI's
        # own answer unserialisable: 500 and a traceback for any unauthenticated client).
        reason = short_reason(exc.errors())
        log.info("malformed request %s %s from %s: %s", request.method, request.url.path,
                 request.client.host if request.client else "?", reason)
        return JSONResponse({"detail": reason, "kind": "invalid"}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Only real bugs get here: every expected failure is mapped to a 4xx by its route.
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="webui")
    app.add_middleware(SecurityHeaders)
    return app


def short_reason(errors: Any) -> str:
    """`where: what` of the first validation error, bounded, without the offending input."""
    try:
        err = errors[0]
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        return f"{where}: {err.get('msg', 'invalid')}"[:200]
    except (IndexError, TypeError, AttributeError):
        return "malformed request"


# The page loads only its own files; nothing may frame it (clickjacking the STOP button).
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; "
                           "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; "
                           "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


class SecurityHeaders:
    """Pure ASGI (not BaseHTTPMiddleware, which costs a task per request and buffers
    streams): nosniff, no framing, a content security policy and no referrer everywhere (the
    interactive API docs, which load their scripts elsewhere, excepted from the policy); no
    caching of API answers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope["path"].startswith(API_PREFIX)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("Referrer-Policy", "no-referrer")
                headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
                if api:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)
