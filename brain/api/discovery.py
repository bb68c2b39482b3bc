"""LAN discovery with zeroconf: advertise the robot, and browse for robots (`brain discover`).

Records: `_brain._tcp.local.` (the companion's service) and `_http._tcp.local.` with path=/ so a
browser's service list offers the web page. Instance name `<robot name> (<short id>)`; TXT keys
id, name, ver, model, api, tls, fp (certificate SHA-256, hex), paired ("1" once any client is).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from zeroconf import (
    DNSQuestionType,
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncZeroconf

log = logging.getLogger(__name__)

BRAIN_TYPE = "_brain._tcp.local."
HTTP_TYPE = "_http._tcp.local."
API_PATH = "/api/v1"


def interface_choice(spec: str, bind_host: str) -> list[str] | InterfaceChoice:
    """api.mdns_interfaces -> zeroconf interfaces: explicit addresses, else loopback when the
    API is bound to loopback, else all."""
    addrs = [a.strip() for a in spec.split(",") if a.strip()]
    if addrs:
        return addrs
    if bind_host in ("127.0.0.1", "localhost", "::1"):
        return ["127.0.0.1"]
    return InterfaceChoice.All


def advertised_addresses(interfaces: list[str] | InterfaceChoice, bind_host: str) -> list[str]:
    if isinstance(interfaces, list):
        return interfaces
    if bind_host not in ("0.0.0.0", "", "::"):
        return [bind_host]
    import ifaddr  # a zeroconf dependency

    return sorted({str(ip.ip) for a in ifaddr.get_adapters() for ip in a.ips
                   if ip.is_IPv4 and not str(ip.ip).startswith("127.")})


def instance_label(name: str, device_id: str) -> str:
    return f"{name} ({device_id[:6]})"


def txt_record(identity: dict[str, Any], *, tls: bool, fingerprint: str,
               paired: bool) -> dict[str, str]:
    return {"id": str(identity.get("id", "")), "name": str(identity.get("name", "")),
            "ver": str(identity.get("version", "")), "model": str(identity.get("model", "")),
            "api": API_PATH, "tls": "1" if tls else "0", "fp": fingerprint if tls else "",
            "paired": "1" if paired else "0"}


class Advertiser:
    """Registers both records on an AsyncZeroconf; call its coroutines on one event loop."""

    def __init__(self, interfaces: list[str] | InterfaceChoice, addresses: list[str], port: int,
                 describe: Callable[[], tuple[str, dict[str, str]]]) -> None:
        self.interfaces = interfaces
        self.addresses = addresses
        self.port = port
        self.describe = describe  # -> (instance label, TXT properties)
        self.azc: AsyncZeroconf | None = None
        self._infos: list[ServiceInfo] = []

    def _build(self) -> list[ServiceInfo]:
        label, txt = self.describe()
        host = socket.gethostname().split(".")[0] or "brain"
        addrs = [socket.inet_aton(a) for a in self.addresses]
        return [ServiceInfo(t, f"{label}.{t}", port=self.port, properties=props,
                            server=f"{host}.local.", addresses=addrs)
                for t, props in ((BRAIN_TYPE, txt), (HTTP_TYPE, {**txt, "path": "/"}))]

    async def start(self) -> None:
        self.azc = AsyncZeroconf(interfaces=self.interfaces, ip_version=IPVersion.V4Only)
        self._infos = self._build()
        for info in self._infos:
            # allow_name_change: two robots with the same name and id prefix still both appear.
            await self.azc.async_register_service(info, allow_name_change=True)
        log.info("advertising %r on %s port %d", self._infos[0].name, self.addresses, self.port)

    async def update(self) -> None:
        """Re-announce after a change of name, model or pairing state."""
        if self.azc is None:
            return
        new = self._build()
        if [i.name for i in new] != [i.name for i in self._infos]:
            for info in self._infos:
                await self.azc.async_unregister_service(info)
            for info in new:
                await self.azc.async_register_service(info, allow_name_change=True)
        else:
            for info in new:
                await self.azc.async_update_service(info)
        self._infos = new

    async def stop(self) -> None:
        if self.azc is None:
            return
        await self.azc.async_unregister_all_services()
        await self.azc.async_close()
        self.azc = None


def _decode(props: dict[bytes, bytes | None]) -> dict[str, str]:
    return {k.decode(errors="replace"): (v or b"").decode(errors="replace")
            for k, v in props.items()}


def discover(timeout: float = 3.0, interfaces: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Browse for robots for `timeout` seconds; one dict per robot with name, id, host,
    addresses, port, tls, fp, ver, model, paired and the mDNS instance name."""
    ifs: list[str] | InterfaceChoice = list(interfaces) if interfaces else InterfaceChoice.All
    zc = Zeroconf(interfaces=ifs, ip_version=IPVersion.V4Only)
    found: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()
    names: set[str] = set()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
        if state_change is not ServiceStateChange.Removed:
            with lock:
                names.add(name)

    # Multicast answers from the first query on: a unicast (QU) answer to a browser on the
    # robot's own host can be delivered to the robot's socket instead, and the robot is missed.
    browser = ServiceBrowser(zc, BRAIN_TYPE, handlers=[on_change],
                             question_type=DNSQuestionType.QM)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.1)
            with lock:
                pending = [n for n in names if n not in found]
            for name in pending:
                info = zc.get_service_info(BRAIN_TYPE, name, timeout=1000)
                if info is None:
                    continue
                txt = _decode(info.properties)
                addrs = info.parsed_addresses(IPVersion.V4Only)
                found[name] = {"name": txt.get("name", ""), "id": txt.get("id", ""),
                               "host": addrs[0] if addrs else (info.server or ""),
                               "addresses": addrs, "port": info.port,
                               "tls": txt.get("tls") == "1", "fp": txt.get("fp", ""),
                               "ver": txt.get("ver", ""), "model": txt.get("model", ""),
                               "paired": txt.get("paired") == "1", "api": txt.get("api", ""),
                               "instance": name.removesuffix("." + BRAIN_TYPE),
                               "server": info.server or ""}
    finally:
        browser.cancel()
        zc.close()
    return sorted(found.values(), key=lambda r: (r["name"], r["id"]))


__all__ = ["Advertiser", "discover", "BRAIN_TYPE", "HTTP_TYPE", "interface_choice",
           "advertised_addresses", "instance_label", "txt_record"]
