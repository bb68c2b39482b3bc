"""Authentication dependencies: bearer tokens on every route, tickets where browsers need them.

A ticket (`?ticket=`, from POST /api/v1/ticket) is accepted only by the routes a browser opens
without custom headers: the teleop WebSocket, the MJPEG stream, the telemetry event stream and
archive downloads. The long-lived bearer token therefore never appears in a URL or a log line.
"""

from __future__ import annotations

from fastapi import Depends, HTTPException, Request, WebSocket
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer

from brain.api.context import ApiContext

bearer = HTTPBearer(auto_error=False, description="Token from POST /api/v1/pair.")
ticket_query = APIKeyQuery(name="ticket", auto_error=False,
                           description="Short-lived ticket from POST /api/v1/ticket.")


def ctx_of(conn: Request | WebSocket) -> ApiContext:
    ctx: ApiContext = conn.app.state.ctx
    return ctx


def _unauthorized() -> HTTPException:
    return HTTPException(401, "missing or invalid token; pair with POST /api/v1/pair",
                         headers={"WWW-Authenticate": "Bearer"})


def client_from_header(ctx: ApiContext, authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return ctx.pairing.authenticate(token.strip())


def require_client(request: Request,
                   creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
    """The paired client making this request; 401 otherwise."""
    ctx = ctx_of(request)
    name = ctx.pairing.authenticate(creds.credentials) if creds else None
    if name is None:
        raise _unauthorized()
    return name


def require_client_or_ticket(request: Request,
                             creds: HTTPAuthorizationCredentials | None = Depends(bearer),
                             ticket: str | None = Depends(ticket_query)) -> str:
    ctx = ctx_of(request)
    name = ctx.pairing.authenticate(creds.credentials) if creds else None
    if name is None and ticket:
        name = ctx.pairing.check_ticket(ticket)
    if name is None:
        raise _unauthorized()
    return name
