"""Running commands on a training machine and moving files to and from it.

Three ways to reach a machine, all built on "run this shell command, feed it these bytes":

- `local`   the machine is this one: `bash -c` in the run's work directory.
- `stream`  `ssh -T host CMD`: no PTY, so stdin and stdout carry bytes unchanged. Files travel
            as base64 text anyway, because RunPod's basic SSH gateway allows neither scp nor
            sftp and is reported to mangle raw binary.
- `pty`     `ssh -tt host` with the commands written to the remote shell's stdin, for a gateway
            that refuses commands without a PTY. Echo is turned off, each command's output is
            framed by markers unique to the call (the marker text is assembled by printf, so
            the terminal's echo of the command line can never be mistaken for it), and a
            banner, a prompt or the PTY's CR/LF rewriting land outside the frames.

Every transfer, in every mode, is a tar whose sha256 is checked on the other side: uploads
write `upload.ok` (the sha256) on the remote side only when it matches; downloads are checked
here before anything is unpacked (and unpacked with tarfile's `data` filter: no links out, no
absolute paths).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import select
import shlex
import subprocess
import tarfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

UPLOAD_OK = "upload.ok"
B64_LINE = 76
Log = Callable[[str], None]


class TransportError(RuntimeError):
    """A command could not be run or a transfer failed its check; `transient` when retrying
    may help (a dropped connection), not when it cannot (a checksum mismatch)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass
class Result:
    rc: int
    out: bytes
    err: str = ""

    @property
    def text(self) -> str:
        return self.out.decode(errors="replace")


class Shell(ABC):
    """Runs shell commands on one machine."""
    mode: str = ""

    @abstractmethod
    def run(self, command: str, stdin: bytes = b"", timeout: float = 600.0) -> Result:
        """Run `command` (POSIX sh syntax) with `stdin`; its stdout, exit code, stderr tail."""

    def close(self) -> None:  # noqa: B027 (only a session-holding shell has work to do)
        """End any session held open (pty mode)."""

    def check(self, command: str, stdin: bytes = b"", timeout: float = 600.0,
              what: str = "") -> Result:
        r = self.run(command, stdin, timeout)
        if r.rc != 0:
            raise TransportError(f"{what or command[:60]} failed on the machine (exit {r.rc})"
                                 f": {(r.err or r.text)[-500:].strip()}", transient=r.rc == 255)
        return r


class LocalShell(Shell):
    mode = "local"

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = env

    def run(self, command: str, stdin: bytes = b"", timeout: float = 600.0) -> Result:
        return _communicate(["bash", "-c", command], stdin, timeout, self.env)


def _communicate(argv: Sequence[str], stdin: bytes, timeout: float,
                 env: dict[str, str] | None = None) -> Result:
    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except BaseException:  # a timeout, or the orchestrator itself interrupted
        _kill_group(proc)
        raise
    return Result(proc.returncode, out, err.decode(errors="replace")[-4000:])


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    proc.wait()


@dataclass
class SshTarget:
    host: str
    user: str = ""
    port: int = 22
    identity: str = ""  # a private key file; empty: the user's ssh configuration decides
    options: tuple[str, ...] = ()  # extra `-o` options, e.g. StrictHostKeyChecking=accept-new
    connect_timeout: int = 10

    def argv(self, *extra: str) -> list[str]:
        a = ["ssh", "-p", str(self.port), "-o", f"ConnectTimeout={self.connect_timeout}",
             "-o", "BatchMode=yes", "-o", "ServerAliveInterval=15"]
        if self.identity:
            a += ["-i", self.identity, "-o", "IdentitiesOnly=yes"]
        for o in self.options:
            a += ["-o", o]
        return a + list(extra) + [f"{self.user}@{self.host}" if self.user else self.host]

    @property
    def where(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"


class StreamShell(Shell):
    """`ssh -T host CMD`: one connection per command, bytes unchanged."""
    mode = "stream"

    def __init__(self, target: SshTarget) -> None:
        self.target = target

    def run(self, command: str, stdin: bytes = b"", timeout: float = 600.0) -> Result:
        return _communicate(self.target.argv("-T") + [command], stdin, timeout)


class PtyShell(Shell):
    """`ssh -tt host`: one interactive session, commands on its stdin, outputs framed."""
    mode = "pty"

    def __init__(self, target: SshTarget, login_timeout: float = 30.0) -> None:
        self.target = target
        self.login_timeout = login_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._buf = b""

    def _start(self) -> subprocess.Popen[bytes]:
        if self.proc is not None and self.proc.poll() is None:
            return self.proc
        self._buf = b""
        self.proc = subprocess.Popen(self.target.argv("-tt"), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        # No echo, no CR/LF rewriting, and a plain POSIX shell without prompts or line editing
        # (an interactive bash would wrap its reads in bracketed-paste escapes); then frame a
        # first command to know the session works.
        self._send(b"stty -echo -icrnl -onlcr 2>/dev/null; exec env PS1= PS2= PS4= /bin/sh\n")
        self._exchange("true", b"", self.login_timeout)
        return self.proc

    def _send(self, data: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise TransportError(f"the ssh session to {self.target.where} closed",
                                 transient=True) from None

    def run(self, command: str, stdin: bytes = b"", timeout: float = 600.0) -> Result:
        self._start()
        return self._exchange(command, stdin, timeout)

    def _exchange(self, command: str, stdin: bytes, timeout: float) -> Result:
        tag = uuid.uuid4().hex
        begin, end = f"BEGIN_{tag}".encode(), f"END_{tag}_".encode()
        # stdin travels as base64 lines in a here-document (a PTY's line discipline limits a
        # line to 4096 bytes and would interpret control bytes).
        body = base64.encodebytes(stdin).decode() if stdin else ""
        script = (f"printf '%s_%s\\n' BEGIN {tag}\n"
                  f"base64 -d <<'EOF_{tag}' | ( {command} ) 2>/dev/null\n{body}EOF_{tag}\n"
                  f"printf '%s_%s_%s\\n' END {tag} $?\n")
        self._send(script.encode())
        deadline = time.monotonic() + timeout
        while True:
            start = self._buf.find(begin + b"\n")
            if start < 0:
                start = self._buf.find(begin + b"\r\n")
            stop = self._buf.find(end, max(start, 0))
            if start >= 0 and stop >= 0:
                nl = self._buf.find(b"\n", stop)
                if nl >= 0:
                    out = self._buf[self._buf.index(b"\n", start) + 1:stop]
                    rc = int(self._buf[stop + len(end):nl].strip() or b"255")
                    self._buf = self._buf[nl + 1:]
                    return Result(rc, out.replace(b"\r\n", b"\n"))
            self._read(deadline)

    def _read(self, deadline: float) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        left = deadline - time.monotonic()
        if left <= 0:
            self.close()
            raise TransportError(f"no answer from {self.target.where} in time (pty session)",
                                 transient=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 1.0))
        if ready:
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr \
                    else ""
                self.close()
                raise TransportError(f"the pty session to {self.target.where} ended: "
                                     f"{err.strip()[-300:]}", transient=True)
            self._buf += chunk

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self._send(b"exit\n")
                self.proc.wait(timeout=3)
            except (TransportError, subprocess.TimeoutExpired):
                _kill_group(self.proc)
        self.proc = None


# -- transfers -------------------------------------------------------------------------------------

def tar_bytes(sources: dict[str, Path]) -> bytes:
    """A tar of `sources` (name in the archive -> local file or directory)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in sorted(sources.items()):
            tar.add(str(path), arcname=name)
    return buf.getvalue()


def upload(shell: Shell, sources: dict[str, Path], remote_dir: str, log: Log) -> dict[str, object]:
    """Send `sources` into `remote_dir`, checked by sha256 there; returns what was verified."""
    data = tar_bytes(sources)
    sha = hashlib.sha256(data).hexdigest()
    d = shlex.quote(remote_dir)
    t0 = time.monotonic()
    command = (f"set -e; mkdir -p {d}; cd {d}; rm -f {UPLOAD_OK}; base64 -d > .upload.tar; "
               f"got=$(sha256sum .upload.tar | cut -d' ' -f1); "
               f"if [ \"$got\" != {sha} ]; then echo \"MISMATCH $got\"; exit 3; fi; "
               f"tar -xf .upload.tar; rm -f .upload.tar; echo $got > {UPLOAD_OK}; echo OK $got")
    r = shell.run(command, base64.b64encode(data), timeout=max(600.0, len(data) / 1e6))
    if r.rc != 0 or f"OK {sha}" not in r.text:
        raise TransportError(f"upload to {remote_dir} not verified (exit {r.rc}): "
                             f"{(r.text + r.err).strip()[-300:]}", transient=r.rc == 255)
    log(f"uploaded {len(data)} bytes to {remote_dir}, sha256 {sha} verified there "
        f"({UPLOAD_OK} written) in {time.monotonic() - t0:.1f} s")
    return {"bytes": len(data), "sha256": sha, "verified": True,
            "upload_ok": f"{remote_dir}/{UPLOAD_OK}"}


def download(shell: Shell, remote_dir: str, names: Sequence[str], dest: Path,
             log: Log) -> dict[str, object]:
    """Fetch `names` (relative to `remote_dir`) as one tar stream, check its sha256 against the
    remote side's, unpack into `dest`."""
    d = shlex.quote(remote_dir)
    files = " ".join(shlex.quote(n) for n in names)
    command = (f"set -e; cd {d}; tar -cf .download.tar {files}; "
               f"echo SHA $(sha256sum .download.tar | cut -d' ' -f1); base64 -w0 .download.tar;"
               f" echo; rm -f .download.tar")
    t0 = time.monotonic()
    r = shell.run(command, timeout=1800)
    lines = r.text.strip().splitlines()
    if r.rc != 0 or len(lines) < 2 or not lines[0].startswith("SHA "):
        raise TransportError(f"download from {remote_dir} failed (exit {r.rc}): "
                             f"{(r.err or r.text).strip()[-300:]}", transient=r.rc == 255)
    want = lines[0].split()[1]
    data = base64.b64decode("".join(lines[1:]), validate=True)
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise TransportError(f"download from {remote_dir}: sha256 {got} here, {want} there")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    log(f"downloaded {len(data)} bytes from {remote_dir}, sha256 {got} matches the machine's "
        f"in {time.monotonic() - t0:.1f} s")
    return {"bytes": len(data), "sha256": got, "verified": True}
