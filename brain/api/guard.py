"""Slow and idle clients must not starve the others (health, pairing and the e-stop above all).

uvicorn counts every open connection against its concurrency limit and has no time limit for
receiving a request's head, so a few dozen connections that send nothing, or one header line
every few seconds, made every request answer 503. `GuardedH11Protocol` is uvicorn's own h11
protocol with two rules added:

- a connection must deliver a complete request head within `header_timeout_s` of connecting
  (and of finishing the previous response, on a kept-alive connection), or it is closed;
- connections still sending their head are capped per client address and in total; when a
  new one would pass a cap, the *oldest* pending one is closed, so a newcomer (the owner's
  request) always gets its chance, however many stalled connections an address holds.

Requests being served, WebSockets and streams are not pending and are not touched. Hand-written
because no server option does this: uvicorn's `timeout_keep_alive` covers only the idle time
between requests, `limit_concurrency` answers 503 to everyone once the slow ones fill it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


class ConnectionGuard:
    """The shared bookkeeping of one server's pending (head-not-yet-received) connections."""

    def __init__(self, header_timeout_s: float, max_pending_per_address: int,
                 max_pending: int) -> None:
        self.header_timeout_s = header_timeout_s
        self.max_pending_per_address = max_pending_per_address
        self.max_pending = max_pending
        self.pending: OrderedDict[GuardedH11Protocol, str] = OrderedDict()  # oldest first
        self.by_address: dict[str, OrderedDict[GuardedH11Protocol, None]] = {}
        self.closed_slow = 0  # connections dropped for a late request head
        self.closed_evicted = 0  # connections dropped to make room for a newer one

    def add(self, proto: GuardedH11Protocol, address: str) -> None:
        mine = self.by_address.setdefault(address, OrderedDict())
        while len(mine) >= self.max_pending_per_address:
            self._evict(next(iter(mine)))
        while len(self.pending) >= self.max_pending:
            self._evict(next(iter(self.pending)))
        mine[proto] = None
        self.pending[proto] = address

    def remove(self, proto: GuardedH11Protocol) -> None:
        address = self.pending.pop(proto, None)
        if address is None:
            return
        mine = self.by_address.get(address)
        if mine is not None:
            mine.pop(proto, None)
            if not mine:
                del self.by_address[address]

    def _evict(self, proto: GuardedH11Protocol) -> None:
        self.remove(proto)
        self.closed_evicted += 1
        proto.drop("evicted by a newer connection from the same address")


class GuardedH11Protocol(H11Protocol):
    guard: ConnectionGuard  # set on a per-server subclass (see `protocol_class`)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._awaited_cycle: Any = None

    # -- the rules ------------------------------------------------------------------------------
    def _await_head(self) -> None:
        """From now on a request head is due within the timeout."""
        self._head_received()
        self._awaited_cycle = self.cycle
        address = self.client[0] if self.client else "unknown"
        self.guard.add(self, address)
        self._head_timer = self.loop.call_later(self.guard.header_timeout_s, self._too_slow)

    def _head_received(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self.guard.remove(self)

    def _too_slow(self) -> None:
        self._head_timer = None
        self.guard.remove(self)
        self.guard.closed_slow += 1
        self.drop(f"no complete request within {self.guard.header_timeout_s:g} s")

    def drop(self, why: str) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self.transport is not None and not self.transport.is_closing():
            log.debug("closing %s: %s", self.client, why)
            self.transport.close()

    # -- uvicorn's protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        upgraded = self.transport.get_protocol() is not self  # a WebSocket took over
        if upgraded or self.cycle is not self._awaited_cycle:
            self._head_received()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._await_head()  # the next request on a kept-alive connection is due in time
        super().on_response_complete()  # may start a pipelined request at once
        if self.cycle is not self._awaited_cycle:
            self._head_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_received()
        super().connection_lost(exc)


def protocol_class(guard: ConnectionGuard) -> type[GuardedH11Protocol]:
    """A protocol class bound to one server's guard (uvicorn instantiates it per connection)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"guard": guard})
