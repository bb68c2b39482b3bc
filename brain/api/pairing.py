"""Pairing: one-time 6-digit codes shown on the device, exchanged for bearer tokens.

Only a SHA-256 of each token is stored (`state_dir/api/clients.json`, 0600, durable writes), so
a copied state directory does not leak working credentials. Every change of the paired clients
is on disk before it is acknowledged: on a failed write the in-memory state is left as it was
and the error says what to free.

Threat model (a LAN attacker without the code): it may try codes from as many addresses as it
likes. Each address is locked out after a few wrong codes (exponentially longer each time), and
the code itself is retired after `failures_per_code` wrong codes from all addresses together,
so one code is guessed with a probability of at most failures_per_code / 10^6. A retired code
is not replaced: pairing closes until the owner asks the robot for a new code (`brain pair`
over the local control socket, which no LAN host reaches), so the network gets at most
`failures_per_code` guesses per code the owner asks for, however many addresses it has. The
owner typing the retired code is told so without it counting as a failure: the attacker can
make the owner run `brain pair` again, never lock the owner out or pair itself. Lockouts
are per address and never spill onto others; the address is the TCP peer (proxy headers are
ignored unless a trusted proxy is configured).

Browsers cannot put headers on WebSocket, EventSource or <img> requests; for those the page
asks for a short-lived signed *ticket* (`issue_ticket`) and passes it as `?ticket=`. Tickets
are HMAC-signed with a per-process secret, so a restart invalidates them all; revoking (or
re-pairing) a client invalidates its tickets at once.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brain.durable import atomic_write_json

log = logging.getLogger(__name__)

CLIENTS_FILE = "clients.json"
CLIENT_NAME_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")


class PairingError(Exception):
    """A pairing attempt was refused; the message is safe to show to the client."""


class CodeRejected(PairingError):
    """Wrong, expired or absent code."""


class CodeRetired(CodeRejected):
    """The code was right once but was retired after too many wrong guesses by others."""


class LockedOut(PairingError):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many wrong pairing codes from this address; "
                         f"try again in {int(retry_after_s) + 1} s")
        self.retry_after_s = retry_after_s


class StoreError(PairingError):
    """The paired-clients file could not be written; nothing was changed."""

    def __init__(self, message: str, no_space: bool) -> None:
        super().__init__(message)
        self.no_space = no_space


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _code_hash(code: str) -> bytes:
    return hashlib.sha256(code.encode("utf-8", "replace")).digest()


@dataclass
class _Failures:
    count: int = 0
    locked_until: float = 0.0
    lockouts: int = 0


class Pairing:
    def __init__(self, api_dir: str | os.PathLike[str], code_ttl_s: float = 300.0, *,
                 clock: Callable[[], float] = time.time, failures_before_lockout: int = 5,
                 lockout_s: float = 60.0, max_lockout_s: float = 3600.0,
                 failures_per_code: int = 20, ticket_ttl_s: float = 120.0) -> None:
        self.dir = Path(api_dir)
        self.code_ttl_s = code_ttl_s
        self.clock = clock
        self.failures_before_lockout = failures_before_lockout
        self.lockout_s = lockout_s
        self.max_lockout_s = max_lockout_s
        self.failures_per_code = failures_per_code
        self.ticket_ttl_s = ticket_ttl_s
        self._lock = threading.Lock()
        self._code: str | None = None
        self._code_expires = 0.0
        self._code_failures = 0
        self._closed = False  # a code was retired and the owner has not asked for a new one
        self._retired: dict[bytes, float] = {}  # hash of a retired code -> when it would expire
        self._failures: dict[str, _Failures] = {}
        self._ticket_key = secrets.token_bytes(32)
        self._listeners: list[Callable[[], None]] = []
        self.retired_codes = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        self._clients: dict[str, dict[str, Any]] = self._load()
        self._by_hash = {c["token_sha256"]: name for name, c in self._clients.items()}

    # -- storage ---------------------------------------------------------------------------
    def _load(self) -> dict[str, dict[str, Any]]:
        path = self.dir / CLIENTS_FILE
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise RuntimeError(f"{path}: unreadable paired-clients file ({e}); remove it to "
                               "forget all paired clients") from None
        clients = data.get("clients") if isinstance(data, dict) else None
        if not isinstance(clients, dict):
            raise RuntimeError(f"{path}: malformed paired-clients file (no 'clients' table)")
        return clients

    def _commit(self, clients: dict[str, dict[str, Any]]) -> None:
        """Write `clients` durably, then make it the state (called with the lock held)."""
        path = self.dir / CLIENTS_FILE
        try:
            atomic_write_json(path, {"version": 1, "clients": clients}, mode=0o600)
        except OSError as e:
            no_space = e.errno in (errno.ENOSPC, errno.EDQUOT)
            hint = (f"the disk holding {self.dir} is full: free some space (old exports, "
                    "episodes) and retry" if no_space else "check the state directory")
            raise StoreError(f"cannot save {path}: {e.strerror or e}; {hint}. Nothing was "
                             "changed.", no_space) from None
        self._clients = clients
        self._by_hash = {c["token_sha256"]: name for name, c in clients.items()}

    def on_change(self, callback: Callable[[], None]) -> None:
        """Run `callback` after the set of paired clients changes (for mDNS `paired`)."""
        self._listeners.append(callback)

    def _changed(self) -> None:
        for cb in self._listeners:
            try:
                cb()
            except Exception:
                log.exception("pairing change listener failed")

    # -- codes -----------------------------------------------------------------------------
    def new_code(self) -> dict[str, Any]:
        """A fresh code (replacing any earlier one): {"code": "123456", "expires": epoch s}."""
        with self._lock:
            code, expires = self._fresh_code()
        log.warning("pairing code %s (valid %d s)", code, int(self.code_ttl_s))
        return {"code": code, "expires": expires}

    def _fresh_code(self) -> tuple[str, float]:
        self._code = f"{secrets.randbelow(1_000_000):06d}"
        self._code_expires = self.clock() + self.code_ttl_s
        self._code_failures = 0
        self._closed = False
        return self._code, self._code_expires

    def pair(self, code: Any, client_name: Any, remote: str) -> str:
        """Exchange a valid code for a new bearer token for `client_name` (re-pairing a name
        replaces its old token). Raises CodeRejected, CodeRetired, LockedOut or StoreError;
        ValueError for a bad name. Any input is safe: wrong types are wrong codes."""
        if not isinstance(client_name, str) or not CLIENT_NAME_RE.fullmatch(client_name):
            raise ValueError("client_name must be 1-64 printable characters")
        code = code if isinstance(code, str) else ""
        with self._lock:
            now = self.clock()
            fails = self._failures.setdefault(remote, _Failures())
            if fails.locked_until > now:
                raise LockedOut(fails.locked_until - now)
            active = self._code is not None and now < self._code_expires
            given = _code_hash(code)
            if not (active and hmac.compare_digest(given, _code_hash(str(self._code)))):
                self._forget_expired(now)
                if given in self._retired:
                    raise CodeRetired("that pairing code was retired after too many wrong "
                                      "attempts from the network; run `brain pair` on the "
                                      "robot for the new one")
                self._fail(remote, fails, now)
                if self._closed:
                    raise CodeRejected("pairing is closed after too many wrong codes from "
                                       "the network; run `brain pair` on the robot for a new "
                                       "one")
                raise CodeRejected("pairing code wrong or expired; get a new one with "
                                   "`brain pair` on the robot")
            token = secrets.token_urlsafe(32)
            entry = {"token_sha256": token_hash(token), "created": now, "address": remote}
            self._commit({**self._clients, client_name: entry})
            self._failures.pop(remote, None)
            self._code = None  # one use only
        log.info("paired client %r from %s", client_name, remote)
        self._changed()
        return token

    def _forget_expired(self, now: float) -> None:
        for h, until in list(self._retired.items()):
            if until < now:
                del self._retired[h]

    def _fail(self, remote: str, fails: _Failures, now: float) -> None:
        fails.count += 1
        if self._code is not None:
            self._code_failures += 1
            if self._code_failures >= self.failures_per_code:
                self._retired[_code_hash(self._code)] = max(self._code_expires,
                                                            now + self.code_ttl_s)
                self.retired_codes += 1
                self._code = None  # closed until the owner asks for a new code
                self._closed = True
                log.warning("pairing closed: the code was retired after %d wrong attempts "
                            "from the network; run `brain pair` on the robot for a new one",
                            self.failures_per_code)
        if fails.count >= self.failures_before_lockout:
            duration = min(self.lockout_s * 2 ** fails.lockouts, self.max_lockout_s)
            fails.locked_until = now + duration
            fails.lockouts += 1
            fails.count = 0
            log.warning("pairing locked out for %s for %d s", remote, int(duration))
        if len(self._failures) > 10_000:  # bounded memory whatever the number of addresses
            for addr, f in list(self._failures.items()):
                if f.locked_until < now and addr != remote:
                    del self._failures[addr]

    @property
    def current_code(self) -> dict[str, Any] | None:
        """The code the robot shows now (after a retirement too), or None."""
        with self._lock:
            if self._code is None or self.clock() >= self._code_expires:
                return None
            return {"code": self._code, "expires": self._code_expires}

    # -- tokens ----------------------------------------------------------------------------
    def authenticate(self, token: Any) -> str | None:
        """The client name a bearer token belongs to, or None."""
        if not isinstance(token, str):
            return None
        return self._by_hash.get(token_hash(token))

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"name": n, "created": c["created"], "address": c.get("address", "")}
                    for n, c in sorted(self._clients.items())]

    @property
    def paired_count(self) -> int:
        return len(self._clients)

    def revoke(self, name: str) -> dict[str, Any]:
        """Forget `name`: its token, its tickets and its open streams stop working. KeyError
        when there is no such client; StoreError (nothing changed) when it cannot be saved."""
        with self._lock:
            if name not in self._clients:
                known = ", ".join(sorted(self._clients)) or "none"
                raise KeyError(f"no paired client named {name!r} (paired: {known})")
            self._commit({n: c for n, c in self._clients.items() if n != name})
        log.info("revoked client %r", name)
        self._changed()
        return {"revoked": name}

    def still_paired(self, client: str, since: float) -> bool:
        """Whether `client` is paired as it was at `since` (not revoked or re-paired since):
        open streams ask this to end when their client is revoked."""
        entry = self._clients.get(client)
        return entry is not None and entry["created"] <= since

    # -- tickets ---------------------------------------------------------------------------
    def _sign(self, payload: bytes) -> bytes:
        return base64.urlsafe_b64encode(
            hmac.new(self._ticket_key, payload, hashlib.sha256).digest()[:18])

    def issue_ticket(self, client: str) -> dict[str, Any]:
        now = self.clock()
        expires = now + self.ticket_ttl_s
        payload = json.dumps([client, round(expires, 3), round(now, 3)],
                             separators=(",", ":")).encode()
        body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return {"ticket": f"{body}.{self._sign(payload).decode()}", "expires": expires}

    def check_ticket(self, ticket: Any) -> str | None:
        """The client a valid, unexpired ticket was issued to (still paired as it was when the
        ticket was issued), or None. Any input is safe."""
        if not isinstance(ticket, str) or len(ticket) > 1024 or not ticket.isascii():
            return None
        body, _, sig = ticket.partition(".")
        try:
            payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            client, expires, issued = json.loads(payload)
        except (ValueError, TypeError):
            return None
        if not hmac.compare_digest(sig.encode(), self._sign(payload)):
            return None
        if not isinstance(client, str) or not all(isinstance(v, int | float)
                                                   for v in (expires, issued)):
            return None
        if self.clock() > expires or not self.still_paired(client, issued + 0.001):
            return None
        return client
