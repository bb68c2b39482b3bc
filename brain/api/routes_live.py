"""Live routes: teleop WebSocket, MJPEG camera view and the telemetry event stream.

Teleop authentication: browsers cannot set headers on a WebSocket, so the page passes a
short-lived ticket as `?ticket=` (POST /api/v1/ticket); other clients may send
`Authorization: Bearer <token>` instead. Each text frame is JSON {"steering", "throttle"} in
[-1, 1] (real numbers only), the arguments of the `drive` command, and refreshes the deadman.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import orjson
from fastapi import APIRouter, Depends, Request, WebSocket
from fastapi.responses import StreamingResponse
from fastapi.sse import EventSourceResponse

from brain.api.auth import client_from_header, ctx_of, require_client_or_ticket
from brain.api.context import ApiContext
from brain.commands import CommandError, Invalid

log = logging.getLogger(__name__)
router = APIRouter()

MAX_TELEOP_MESSAGE = 1024  # bytes; also enforced by the server's ws_max_size
BOUNDARY = "frame"
STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {401: {"description": "Not paired"}}


def origin_allowed(origin: str | None, host: str | None) -> bool:
    """Same host (and port) as the page, or no Origin at all (native clients)."""
    if not origin:
        return True
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(host) and netloc.lower() == str(host).lower()


@router.websocket("/teleop")
async def teleop(ws: WebSocket) -> None:
    ctx = ctx_of(ws)
    if not origin_allowed(ws.headers.get("origin"), ws.headers.get("host")):
        log.warning("teleop refused: origin %r", ws.headers.get("origin"))
        await ws.close(code=1008, reason="origin not allowed")
        return
    client = client_from_header(ctx, ws.headers.get("authorization"))
    ticket = ws.query_params.get("ticket")
    if client is None and ticket:
        client = ctx.pairing.check_ticket(ticket)
    if client is None:
        await ws.close(code=1008, reason="not paired: pass ?ticket= or a bearer token")
        return
    await ws.accept()
    await _teleop_session(ws, ctx, client)


async def _teleop_session(ws: WebSocket, ctx: ApiContext, client: str) -> None:
    """Each text frame is a `drive` command. The deadman is the robot's own (the same for
    every transport: a command lapses `safety.deadman_ms` after it arrived); a closed link is
    released at once. A command refused in the current mode is answered with one
    {"error", "kind"} frame, repeated only after a command was accepted again."""
    refused = False
    since = ctx.pairing.clock()
    try:
        while not ctx.closing.is_set():
            msg = await ws.receive()
            if not ctx.pairing.still_paired(client, since):
                await ws.close(code=1008, reason="client revoked")
                break
            if msg["type"] == "websocket.disconnect":
                break
            text = msg.get("text")
            if text is None:
                await ws.close(code=1003, reason="send JSON text frames")
                break
            if len(text) > MAX_TELEOP_MESSAGE:
                await ws.close(code=1009, reason="message too large")
                break
            try:
                args = ctx.service.commands.parse("drive", _json(text))
                ctx.service.teleop(args.steering, args.throttle, client)  # type: ignore[attr-defined]
            except Invalid as e:
                ctx.service.teleop_release(client)
                await ws.close(code=1007, reason=str(e)[:120])
                break
            except CommandError as e:
                if not refused:
                    await ws.send_json({"error": str(e), "kind": e.kind})
                refused = True
                continue
            refused = False
    except Exception as e:  # a broken socket ends the session; the robot goes neutral below
        log.info("teleop link of %s ended: %s", client, type(e).__name__)
    finally:
        ctx.service.teleop_release(client)


def _json(text: str) -> object:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise Invalid("invalid teleop message: not JSON") from None


@router.get("/camera.mjpeg", response_class=StreamingResponse, responses={
    **STREAM_RESPONSES, 200: {"content": {f"multipart/x-mixed-replace; boundary={BOUNDARY}": {}},
                              "description": "MJPEG stream"}})
async def camera(request: Request,
                 client: str = Depends(require_client_or_ticket)) -> StreamingResponse:
    """Live camera view, capped at api.camera_fps; frames are encoded by the daemon once."""
    ctx = ctx_of(request)

    since = ctx.pairing.clock()

    async def frames() -> AsyncIterator[bytes]:
        period, last_t = 1.0 / ctx.camera_fps, None
        while not ctx.closing.is_set() and ctx.pairing.still_paired(client, since):
            got = ctx.service.latest_jpeg(max_age_s=2.0)
            if got is not None and got[1] != last_t:
                jpeg, last_t = got
                yield (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                       f"Content-Length: {len(jpeg)}\r\n\r\n").encode() + jpeg + b"\r\n"
            await asyncio.sleep(period)

    return StreamingResponse(frames(), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                             headers={"Cache-Control": "no-store"})


@router.get("/telemetry", response_class=EventSourceResponse, responses=STREAM_RESPONSES)
async def telemetry(request: Request,
                    client: str = Depends(require_client_or_ticket)) -> AsyncIterator[dict]:
    """Server-Sent Events, one JSON snapshot per event at ~10 Hz: mode, action, lateness,
    rate, resources, recorder."""
    ctx = ctx_of(request)
    since = ctx.pairing.clock()
    while not ctx.closing.is_set() and ctx.pairing.still_paired(client, since):
        yield ctx.service.telemetry()
        await asyncio.sleep(1.0 / ctx.telemetry_hz)
