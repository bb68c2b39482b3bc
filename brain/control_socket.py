"""The local control socket: how the CLI (and local tools) talk to a running daemon.

Protocol: a unix stream socket in the runtime dir; the client sends one JSON object per line
`{"cmd": "status", "args": {...}}`, the server answers one line `{"ok": true, "result": ...}` or
`{"ok": false, "error": "...", "kind": "refused"}` (kinds: `brain.commands.ERRORS`). File
permissions (0660, owner brain) are the authentication: this is the admin path, remote clients
use the HTTPS API with a paired token. The commands themselves are the service's
(`brain.commands`): this module only carries them.

Every request gets an answer, malformed ones included (not JSON, not UTF-8, nested too deep,
too large, too slow). One thread reads all connections (an idle connection costs a file
descriptor, not a thread), with a read timeout and a cap on connections still sending their
request (the one waiting longest is closed for a newcomer); complete requests run on a bounded
set of worker threads.

Out of file descriptors (EMFILE, ENFILE: a flood somewhere else in the process), the accept
loop neither spins nor floods the log: it lets go of one of `RESERVED_FDS` descriptors held
back for this moment and accepts with it, so the admin's e-stop still gets through; with none
left it stops polling the listener for a while (backing off to 1 s) and says so in the log at
most every 10 s.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from brain.paths import ensure_dir

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024
READ_TIMEOUT_S = 5.0  # a client must send its whole request line within this
MAX_CONNECTIONS = 64  # still sending their request; the oldest is closed for a newcomer
MAX_WORKERS = 16  # requests running at once (an export takes seconds)
# Descriptors held back for this socket: when the process runs out (a flood elsewhere), one is
# let go so that a local `brain mode estop` is still accepted and answered.
RESERVED_FDS = 2
ACCEPT_BACKOFF_S = (0.05, 1.0)  # out of descriptors with none in reserve: stop polling for this
OUT_OF_FDS_LOG_EVERY_S = 10.0


class ControlError(RuntimeError):
    """The daemon refused or failed a command; the message says why."""

    def __init__(self, message: str, kind: str = "", **fields: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.fields = fields


class DaemonNotRunning(ControlError):
    """No daemon answers on the control socket."""


Dispatch = Callable[[str, dict[str, Any]], Any]


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
        except OSError as e:  # e.g. a socket path too long for AF_UNIX
            raise ControlError(f"cannot reach the daemon on {self.path}: "
                               f"{e.strerror or e}") from None
        if not buf:
            raise ControlError(f"the daemon closed {self.path} without answering")
        try:
            reply = json.loads(buf)
        except ValueError:
            raise ControlError(f"the daemon on {self.path} answered garbage") from None
        if not reply.get("ok"):
            extra = {k: v for k, v in reply.items() if k not in ("ok", "error", "kind")}
            raise ControlError(reply.get("error", "unknown error"), reply.get("kind", ""),
                               **extra)
        return reply.get("result")


def _error(message: str, kind: str = "invalid") -> dict[str, Any]:
    return {"ok": False, "error": message, "kind": kind}


def parse_request(line: bytes) -> tuple[str, dict[str, Any]] | dict[str, Any]:
    """(command, args), or the error reply for a malformed request."""
    try:
        request = orjson.loads(line)  # rejects invalid UTF-8 and nesting deeper than 1024
    except orjson.JSONDecodeError as e:
        return _error(f"malformed request: not JSON ({e.msg})")
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        return _error("malformed request: expected {\"cmd\": ..., \"args\": {}}")
    args = request.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return _error("malformed request: args must be an object")
    return request["cmd"], args


class _Conn:
    __slots__ = ("sock", "buf", "deadline")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.buf, self.deadline = sock, bytearray(), deadline


class ControlServer:
    """Serves `dispatch(cmd, args)` on a unix socket. `dispatch` raises CommandError for every
    refusal; anything else is a bug, logged once and answered as an internal error."""

    def __init__(self, path: str | os.PathLike[str], dispatch: Dispatch, *,
                 max_connections: int = MAX_CONNECTIONS, max_workers: int = MAX_WORKERS,
                 read_timeout_s: float = READ_TIMEOUT_S) -> None:
        self.path = Path(path)
        self._dispatch = dispatch
        self.max_connections = max_connections
        self.read_timeout_s = read_timeout_s
        self._workers = threading.BoundedSemaphore(max_workers)
        self._listener: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = -1, -1
        self.refused = 0  # connections turned away (cap, timeout, oversize)
        self._reserve: list[int] = []  # descriptors held back (see the module docstring)
        self._reserve_lock = threading.Lock()
        self._paused_until = 0.0  # the listener is not polled before this (out of descriptors)
        self._backoff_s = ACCEPT_BACKOFF_S[0]
        self._deferred = 0  # accepts put off since the last log line about it
        self._last_fd_log = float("-inf")

    def dispatch(self, request: Any) -> dict[str, Any]:
        """One request object -> its reply object (the protocol minus the framing)."""
        parsed = parse_request(request if isinstance(request, bytes) else
                               json.dumps(request).encode())
        if isinstance(parsed, dict):
            return parsed
        cmd, args = parsed
        if cmd == "ping":
            return {"ok": True, "result": "pong"}
        from brain.commands import CommandError  # the server's side only: the CLI's client
        # never pays for pydantic, which the command definitions need
        try:
            return {"ok": True, "result": self._dispatch(cmd, args)}
        except CommandError as e:
            return {**_error(str(e), e.kind), **e.fields}
        except Exception as e:  # a handler bug must not take the daemon down
            log.exception("control command %s failed", cmd)
            return _error(f"internal error: {type(e).__name__}: {e}", "internal")

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if not self.path.parent.is_dir():  # systemd makes /run/brain; in development we do
            try:
                ensure_dir(self.path.parent, 0o750)
            except OSError as e:
                raise RuntimeError(str(e)) from None
        if self.path.exists() or self.path.is_symlink():
            # A stale socket from a killed daemon: refuse if something still answers on it.
            try:
                ControlClient(self.path, timeout=1.0).call("ping")
            except ControlError:
                self.path.unlink()
            else:
                raise RuntimeError(f"another brain daemon is already running on {self.path}")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o117)  # socket file 0660
        try:
            listener.bind(str(self.path))
        except OSError as e:
            listener.close()
            raise RuntimeError(f"cannot create the control socket {self.path}: "
                               f"{e.strerror or e}") from None
        finally:
            os.umask(old_umask)
        listener.listen(64)
        listener.setblocking(False)
        self._listener = listener
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._refill_reserve()
        self._thread = threading.Thread(target=self._serve, name="control-socket", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            os.write(self._wake_w, b"x")
            self._thread.join(timeout=5.0)
            self._thread = None
            os.close(self._wake_r)
            os.close(self._wake_w)
        with self._reserve_lock:
            for fd in self._reserve:
                os.close(fd)
            self._reserve.clear()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    # -- the reader thread ----------------------------------------------------------------------
    def _serve(self) -> None:
        sel, listener = self._selector, self._listener
        assert sel is not None and listener is not None
        conns: dict[int, _Conn] = {}
        listening = True
        try:
            while not self._stop.is_set():
                if not listening and time.monotonic() >= self._paused_until:
                    sel.register(listener, selectors.EVENT_READ, None)
                    listening = True
                deadlines = [c.deadline for c in conns.values()]
                if not listening:
                    deadlines.append(self._paused_until)
                timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
                for key, _ in sel.select(timeout):
                    if key.data == "wake":
                        continue
                    if key.fileobj is listener:
                        if not self._accept(listener, sel, conns):
                            sel.unregister(listener)
                            listening = False
                    else:
                        self._read(key.fileobj, sel, conns)  # type: ignore[arg-type]
                now = time.monotonic()
                for fd, c in list(conns.items()):
                    if c.deadline <= now:
                        del conns[fd]
                        sel.unregister(c.sock)
                        self.refused += 1
                        self._answer_and_close(c.sock, _error(
                            f"request not received within {self.read_timeout_s:g} s"))
        finally:
            for c in conns.values():
                c.sock.close()
            sel.close()
            listener.close()

    def _accept(self, listener: socket.socket, sel: selectors.BaseSelector,
                conns: dict[int, _Conn]) -> bool:
        """Accept what is waiting. False when out of descriptors with none in reserve: the
        caller stops polling the listener until `_paused_until`."""
        self._refill_reserve()
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as e:  # EMFILE and friends: keep serving the connections we have
                if e.errno in (errno.EMFILE, errno.ENFILE) and self._release_one():
                    continue  # accept with a descriptor held back for this
                self._out_of_descriptors(e)
                return False
            self._backoff_s = ACCEPT_BACKOFF_S[0]
            while len(conns) >= self.max_connections:
                # Make room by closing the connection that has waited longest without sending
                # its request: a flood of idle connections can delay nobody's command.
                oldest_fd = next(iter(conns))
                oldest = conns.pop(oldest_fd)
                sel.unregister(oldest.sock)
                self.refused += 1
                self._answer_and_close(oldest.sock, _error(
                    "closed: too many connections waiting; send the request at once",
                    "unavailable"))
            sock.setblocking(False)
            conns[sock.fileno()] = _Conn(sock, time.monotonic() + self.read_timeout_s)
            sel.register(sock, selectors.EVENT_READ, None)

    # -- descriptors held back -------------------------------------------------------------------
    def _refill_reserve(self) -> None:
        with self._reserve_lock:
            while len(self._reserve) < RESERVED_FDS:
                try:
                    self._reserve.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
                except OSError:
                    return  # still short; tried again at the next accept

    def _release_one(self) -> bool:
        with self._reserve_lock:
            if not self._reserve:
                return False
            os.close(self._reserve.pop())
            return True

    def _out_of_descriptors(self, e: OSError) -> None:
        now = time.monotonic()
        self._paused_until = now + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, ACCEPT_BACKOFF_S[1])
        self._deferred += 1
        if now - self._last_fd_log >= OUT_OF_FDS_LOG_EVERY_S:
            log.warning("control socket: cannot accept (%s); %d connection(s) put off, "
                        "polling again in %.2f s", e.strerror or e, self._deferred,
                        self._paused_until - now)
            self._last_fd_log, self._deferred = now, 0

    def _read(self, sock: socket.socket, sel: selectors.BaseSelector,
              conns: dict[int, _Conn]) -> None:
        c = conns[sock.fileno()]
        try:
            chunk = sock.recv(MAX_REQUEST + 1 - len(c.buf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        newline = chunk.find(b"\n")
        if newline >= 0:
            chunk = chunk[:newline]
        c.buf += chunk
        reply: dict[str, Any] | None = None
        if len(c.buf) > MAX_REQUEST:
            reply = _error("request too large")
        elif newline < 0 and chunk:
            return  # more to come
        del conns[sock.fileno()]
        sel.unregister(sock)
        if reply is None and not c.buf:
            sock.close()  # the client hung up without asking anything
            return
        if reply is not None:
            self.refused += 1
            self._answer_and_close(sock, reply)
            return
        if not self._workers.acquire(blocking=False):
            self._answer_and_close(sock, _error("busy: too many requests running; try again",
                                                "unavailable"))
            return
        threading.Thread(target=self._work, args=(sock, bytes(c.buf)), name="control-cmd",
                         daemon=True).start()

    def _work(self, sock: socket.socket, line: bytes) -> None:
        try:
            self._answer_and_close(sock, self.dispatch(line))
        finally:
            self._workers.release()

    @staticmethod
    def _answer_and_close(sock: socket.socket, reply: dict[str, Any]) -> None:
        try:
            sock.setblocking(True)
            sock.settimeout(2.0)
            sock.sendall(orjson.dumps(reply, default=str,
                                      option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
                         + b"\n")
        except OSError:
            pass  # the client went away; nothing to tell it
        finally:
            sock.close()
