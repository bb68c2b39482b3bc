"""ApiServer: uvicorn and zeroconf on their own thread and asyncio loop inside the daemon.

`start()` returns once the socket is listening (or raises naming the address); `stop()` ends
open streams, closes the server and unregisters the mDNS records. Nothing here is ever awaited
by the control loop: the daemon's service object is the only thing the two sides share.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import threading
from typing import Any

import uvicorn
from fastapi import APIRouter

from brain.api.app import create_app
from brain.api.context import ApiContext
from brain.api.discovery import (
    Advertiser,
    advertised_addresses,
    instance_label,
    interface_choice,
    txt_record,
)
from brain.api.guard import ConnectionGuard, protocol_class
from brain.api.routes_live import MAX_TELEOP_MESSAGE
from brain.api.tls import ensure_certificate
from brain.config import Config
from brain.service import RobotService

log = logging.getLogger(__name__)

MAX_PENDING = 256  # connections still sending their request head, all addresses together



def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiServer:
    def __init__(self, service: RobotService, cfg: Config) -> None:
        if service.pairing is None:
            raise RuntimeError("the API needs the service's pairing store")
        self.service = service
        self.cfg = cfg
        self.tls_material = ensure_certificate(cfg.layout.api, cfg.robot_name)
        # HTTPS on every binding but loopback; api.tls (BRAIN_API_TLS=1) forces it there too.
        self.tls = bool(cfg.api.tls) or not is_loopback(cfg.api.host)
        self.pairing = service.pairing
        self.ctx = ApiContext(service=service, pairing=self.pairing,
                              fingerprint=self.tls_material.fingerprint, tls=self.tls,
                              camera_fps=float(cfg.api.camera_fps))
        self._routers: list[tuple[APIRouter, str]] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: uvicorn.Server | None = None
        self._advertiser: Advertiser | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.port = cfg.api.port

    # -- extension points ------------------------------------------------------------------
    def include_router(self, router: APIRouter, prefix: str) -> None:
        """Mount a router (e.g. `/training`, `/ota`) under /api/v1; its routes need a token.
        Call before start()."""
        if self._thread is not None:
            raise RuntimeError("include_router must be called before ApiServer.start()")
        self._routers.append((router, prefix))

    @property
    def url(self) -> str:
        host = self.cfg.api.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def fingerprint(self) -> str:
        return self.tls_material.fingerprint

    # -- lifecycle -------------------------------------------------------------------------
    def _bind(self) -> socket.socket:
        host, port = self.cfg.api.host, self.cfg.api.port
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Accepted sockets inherit this. asyncio only sets TCP_NODELAY itself when the
            # socket's proto is IPPROTO_TCP; without it every response split into header and
            # body writes waits ~40 ms for the client's delayed ACK (measured here).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((host, port))
        except OSError as e:
            raise RuntimeError(f"API cannot listen on {host}:{port}: {e.strerror or e}") from None
        sock.set_inheritable(True)
        return sock

    def start(self, timeout: float = 15.0) -> None:
        sock = self._bind()
        self.port = sock.getsockname()[1]
        app = create_app(self.ctx, self._routers)
        tls_kw: dict[str, Any] = {}
        if self.tls:
            tls_kw = {"ssl_certfile": str(self.tls_material.cert_path),
                      "ssl_keyfile": str(self.tls_material.key_path)}
        a = self.cfg.api
        self.guard = ConnectionGuard(a.header_timeout_s, a.max_pending_per_address,
                                     MAX_PENDING)
        proxies = [p.strip() for p in a.trusted_proxies.split(",") if p.strip()]
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                http=protocol_class(self.guard),
                                ws="websockets-sansio", ws_max_size=MAX_TELEOP_MESSAGE * 4,
                                ws_ping_interval=5.0, ws_ping_timeout=5.0,
                                timeout_graceful_shutdown=2, timeout_keep_alive=5,
                                # Stalled clients are held to MAX_PENDING by the guard; this
                                # only bounds what is really being served.
                                limit_concurrency=MAX_PENDING + 256,
                                # The client address is the TCP peer unless a proxy the user
                                # named says otherwise: X-Forwarded-For from anyone else would
                                # let a client choose the address its lockout is counted on.
                                proxy_headers=bool(proxies),
                                forwarded_allow_ips=proxies or None,
                                h11_max_incomplete_event_size=16 * 1024, **tls_kw)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, args=(sock,), name="api", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"API did not start listening on {self.url} within {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"API failed to start: {self._error}") from self._error
        log.info("API listening on %s (tls fingerprint %s)", self.url,
                 self.fingerprint if self.tls else "off")

    def _run(self, sock: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main(sock))
        except BaseException as e:  # reported by start(); logged if it happens later
            self._error = e
            log.exception("API server stopped with an error")
        finally:
            self._ready.set()
            loop.close()

    async def _main(self, sock: socket.socket) -> None:
        assert self._server is not None
        serving = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started and not serving.done():
            await asyncio.sleep(0.01)
        if serving.done():
            serving.result()
            raise RuntimeError("uvicorn exited during start-up")
        if self.cfg.api.mdns:
            await self._start_mdns()
        self._ready.set()
        await serving
        if self._advertiser is not None:
            try:
                await self._advertiser.stop()
            except Exception:
                log.exception("mDNS unregister failed")

    async def _start_mdns(self) -> None:
        interfaces = interface_choice(self.cfg.api.mdns_interfaces, self.cfg.api.host)
        addresses = advertised_addresses(interfaces, self.cfg.api.host)
        self._advertiser = Advertiser(interfaces, addresses, self.port, self._describe)
        try:
            await self._advertiser.start()
        except Exception as e:  # no multicast: the API still works, discovery does not
            log.warning("mDNS advertising unavailable on %s: %s", addresses, e)
            self._advertiser = None
            return
        self.service.on_change(self.refresh_mdns)
        self.pairing.on_change(self.refresh_mdns)

    def _describe(self) -> tuple[str, dict[str, str]]:
        ident = self.service.identity()
        txt = txt_record(ident, tls=self.tls, fingerprint=self.fingerprint,
                         paired=self.pairing.paired_count > 0)
        return instance_label(txt["name"], txt["id"]), txt

    def refresh_mdns(self) -> None:
        """Re-announce the TXT record; safe from any thread, never waits."""
        loop, adv = self._loop, self._advertiser
        if loop is None or adv is None or loop.is_closed():
            return

        def report(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                log.warning("mDNS update failed: %s", task.exception())

        def schedule() -> None:
            loop.create_task(adv.update()).add_done_callback(report)

        try:
            loop.call_soon_threadsafe(schedule)
        except RuntimeError:
            pass  # loop already closed during shutdown

    def stop(self, timeout: float = 10.0) -> None:
        self.ctx.closing.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("API thread did not stop within %s s", timeout)
            self._thread = None
