"""The local control socket: how the CLI (and local tools) talk to a running daemon.

Protocol: a unix stream socket in the runtime dir; the client sends one JSON object per line
`{"cmd": "status", "args": {...}}`, the server answers one line `{"ok": true, "result": ...}` or
`{"ok": false, "error": "..."}`. File permissions (0660, owner brain) are the authentication: this
is the admin path, remote clients use the HTTPS API with a paired token.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024


class ControlError(RuntimeError):
    """The daemon refused or failed a command; the message says why."""


class DaemonNotRunning(ControlError):
    """No daemon answers on the control socket."""


Handler = Callable[[dict[str, Any]], Any]


class ControlClient:
    def __init__(self, path: str | os.PathLike[str], timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def call(self, cmd: str, **args: Any) -> Any:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout)
                s.connect(str(self.path))
                s.sendall(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
        except (FileNotFoundError, ConnectionRefusedError):
            raise DaemonNotRunning(f"no brain daemon is running (no answer on {self.path}); "
                                   "start it with `brain run` or `systemctl start brain`") from None
        except PermissionError:
            raise ControlError(f"permission denied on {self.path}: run as the brain user, "
                               "root, or a member of the brain group") from None
        except TimeoutError:
            raise ControlError(f"the daemon did not answer on {self.path} within "
                               f"{self.timeout:g} s") from None
        if not buf:
            raise ControlError(f"the daemon closed {self.path} without answering")
        reply = json.loads(buf)
        if not reply.get("ok"):
            raise ControlError(reply.get("error", "unknown error"))
        return reply.get("result")


class ControlServer:
    """Serves registered command handlers on a unix socket from a background thread."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.handlers: dict[str, Handler] = {}
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    def register(self, cmd: str, handler: Handler) -> None:
        self.handlers[cmd] = handler

    def dispatch(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False,
                    "error": "malformed request: expected {\"cmd\": ..., \"args\": {}}"}
        args = request.get("args") or {}
        if not isinstance(args, dict):
            return {"ok": False, "error": "malformed request: args must be an object"}
        handler = self.handlers.get(request["cmd"])
        if handler is None:
            return {"ok": False, "error": f"unknown command {request['cmd']!r}"}
        try:
            return {"ok": True, "result": handler(args)}
        except (ValueError, RuntimeError, KeyError, TypeError) as e:
            return {"ok": False, "error": str(e) or type(e).__name__}
        except Exception as e:  # a handler bug must not take the daemon down
            log.exception("control command %s failed", request["cmd"])
            return {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            # A stale socket from a killed daemon: refuse if something still answers on it.
            try:
                ControlClient(self.path, timeout=1.0).call("ping")
            except DaemonNotRunning:
                self.path.unlink()
            except ControlError:
                self.path.unlink()
            else:
                raise RuntimeError(f"another brain daemon is already running on {self.path}")
        outer = self

        class _Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(MAX_REQUEST + 1)
                if len(line) > MAX_REQUEST:
                    reply = {"ok": False, "error": "request too large"}
                else:
                    try:
                        reply = outer.dispatch(json.loads(line))
                    except json.JSONDecodeError:
                        reply = {"ok": False, "error": "malformed request: not JSON"}
                self.wfile.write(json.dumps(reply, default=str).encode() + b"\n")

        old_umask = os.umask(0o117)  # socket file 0660
        try:
            self._server = socketserver.ThreadingUnixStreamServer(str(self.path), _Handler)
        finally:
            os.umask(old_umask)
        self._server.daemon_threads = True
        self.register("ping", lambda _args: "pong")
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="control-socket", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
