"""Pairing: one-time 6-digit codes shown on the device, exchanged for bearer tokens.

Only a SHA-256 of each token is stored (`state_dir/api/clients.json`, 0600, durable writes), so
a copied state directory does not leak working credentials. Failed codes are rate-limited per
client address with an exponential lockout, and a code is burned after a few failures in total,
so guessing a 6-digit code across many addresses is no better than guessing per address.

Browsers cannot put headers on WebSocket, EventSource or <img> requests; for those the page
asks for a short-lived signed *ticket* (`issue_ticket`) and passes it as `?ticket=`. Tickets
are HMAC-signed with a per-process secret, so a restart invalidates them all.
"""

from __future__ import annotations

import base64
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


class LockedOut(PairingError):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many wrong pairing codes from this address; "
                         f"try again in {int(retry_after_s) + 1} s")
        self.retry_after_s = retry_after_s


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class _Failures:
    count: int = 0
    locked_until: float = 0.0
    lockouts: int = 0


class Pairing:
    def __init__(self, api_dir: str | os.PathLike[str], code_ttl_s: float = 300.0, *,
                 clock: Callable[[], float] = time.time, failures_before_lockout: int = 5,
                 lockout_s: float = 60.0, max_lockout_s: float = 3600.0,
                 failures_per_code: int = 10, ticket_ttl_s: float = 120.0) -> None:
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
        self._failures: dict[str, _Failures] = {}
        self._ticket_key = secrets.token_bytes(32)
        self._listeners: list[Callable[[], None]] = []
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

    def _save(self) -> None:
        atomic_write_json(self.dir / CLIENTS_FILE, {"version": 1, "clients": self._clients},
                          mode=0o600)

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
            self._code = f"{secrets.randbelow(1_000_000):06d}"
            self._code_expires = self.clock() + self.code_ttl_s
            self._code_failures = 0
            code, expires = self._code, self._code_expires
        log.warning("pairing code %s (valid %d s)", code, int(self.code_ttl_s))
        return {"code": code, "expires": expires}

    def pair(self, code: str, client_name: str, remote: str) -> str:
        """Exchange a valid code for a new bearer token for `client_name` (re-pairing a name
        replaces its old token). Raises CodeRejected or LockedOut; ValueError for a bad name."""
        if not CLIENT_NAME_RE.match(client_name):
            raise ValueError("client_name must be 1-64 printable characters")
        with self._lock:
            now = self.clock()
            fails = self._failures.setdefault(remote, _Failures())
            if fails.locked_until > now:
                raise LockedOut(fails.locked_until - now)
            active = self._code is not None and now < self._code_expires
            if not (active and hmac.compare_digest(code.encode(), str(self._code).encode())):
                self._fail(remote, fails, now)
                raise CodeRejected("pairing code wrong or expired; get a new one with "
                                   "`brain pair` on the robot")
            self._failures.pop(remote, None)
            self._code = None  # one use only
            token = secrets.token_urlsafe(32)
            old = self._clients.get(client_name)
            if old:
                self._by_hash.pop(old["token_sha256"], None)
            entry = {"token_sha256": token_hash(token), "created": now, "address": remote}
            self._clients[client_name] = entry
            self._by_hash[entry["token_sha256"]] = client_name
            self._save()
        log.info("paired client %r from %s", client_name, remote)
        self._changed()
        return token

    def _fail(self, remote: str, fails: _Failures, now: float) -> None:
        fails.count += 1
        self._code_failures += 1
        if self._code is not None and self._code_failures >= self.failures_per_code:
            log.warning("pairing code burned after %d wrong attempts", self._code_failures)
            self._code = None
        if fails.count >= self.failures_before_lockout:
            duration = min(self.lockout_s * 2 ** fails.lockouts, self.max_lockout_s)
            fails.locked_until = now + duration
            fails.lockouts += 1
            fails.count = 0
            log.warning("pairing locked out for %s for %d s", remote, int(duration))

    # -- tokens ----------------------------------------------------------------------------
    def authenticate(self, token: str) -> str | None:
        """The client name a bearer token belongs to, or None."""
        return self._by_hash.get(token_hash(token))

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"name": n, "created": c["created"], "address": c.get("address", "")}
                    for n, c in sorted(self._clients.items())]

    @property
    def paired_count(self) -> int:
        return len(self._clients)

    def revoke(self, name: str) -> dict[str, Any]:
        with self._lock:
            entry = self._clients.pop(name, None)
            if entry is None:
                known = ", ".join(sorted(self._clients)) or "none"
                raise KeyError(f"no paired client named {name!r} (paired: {known})")
            self._by_hash.pop(entry["token_sha256"], None)
            self._save()
        log.info("revoked client %r", name)
        self._changed()
        return {"revoked": name}

    # -- tickets ---------------------------------------------------------------------------
    def _sign(self, payload: bytes) -> str:
        return base64.urlsafe_b64encode(
            hmac.new(self._ticket_key, payload, hashlib.sha256).digest()[:18]).decode()

    def issue_ticket(self, client: str) -> dict[str, Any]:
        expires = self.clock() + self.ticket_ttl_s
        payload = json.dumps([client, round(expires, 3)], separators=(",", ":")).encode()
        body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return {"ticket": f"{body}.{self._sign(payload)}", "expires": expires}

    def check_ticket(self, ticket: str) -> str | None:
        """The client a valid, unexpired ticket was issued to (still paired), or None."""
        body, _, sig = ticket.partition(".")
        try:
            payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            client, expires = json.loads(payload)
        except (ValueError, TypeError):
            return None
        if not hmac.compare_digest(sig, self._sign(payload)):
            return None
        if not isinstance(client, str) or not isinstance(expires, int | float):
            return None
        if self.clock() > expires or client not in self._clients:
            return None
        return client
