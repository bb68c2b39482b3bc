"""Shared fixtures for the API tests: a real ApiServer on loopback around the real service."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from brain.api.server import ApiServer
from tests.api_support.light_service import LightService


@contextmanager
def running_server(state_dir: Path, *, tls: bool = False, mdns: bool = False,
                   deadman_ms: int = 250) -> Iterator[tuple[ApiServer, LightService]]:
    svc = LightService(state_dir, deadman_ms=deadman_ms)
    cfg = svc.cfg
    cfg.api.port, cfg.api.tls, cfg.api.mdns = 0, tls, mdns
    server = ApiServer(svc.service, cfg)
    server.start()
    try:
        yield server, svc
    finally:
        server.stop()
        svc.close()


def pair(server: ApiServer, name: str = "tester") -> dict[str, str]:
    code = server.pairing.new_code()["code"]
    with httpx.Client(base_url=server.url, verify=False) as c:
        r = c.post("/api/v1/pair", json={"code": code, "client_name": name})
        r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['token']}"}


@contextmanager
def started_api(state_dir: Path) -> Iterator[tuple[LightService, httpx.Client, ApiServer]]:
    """The real service over a light body behind a real server, and a paired client."""
    with running_server(state_dir) as (server, svc):
        with httpx.Client(base_url=server.url, headers=pair(server), timeout=60) as c:
            yield svc, c, server
