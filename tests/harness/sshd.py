"""A real OpenSSH server on loopback (Debian's openssh-server), in one of three behaviours:

- `plain`    an ordinary host: commands with or without a PTY, scp and sftp work.
- `gateway`  like RunPod's basic SSH gateway: no sftp subsystem, scp refused, a banner on login;
             commands without a PTY still run (what seed 002 reports working with `ssh -T`).
- `pty-only` the same gateway, but it refuses any command that comes without a PTY ("Your SSH
             client doesn't support PTY"), as third-party reports describe; only `ssh -tt` with
             the commands typed into the shell gets through.

The gateway behaviours are a ForceCommand script in front of the shell: the lowest seam at which
such a gateway can be imitated with the real server, client and network stack. sshd needs root
(it switches users and uses /run/sshd for privilege separation).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
MODES = ("plain", "gateway", "pty-only")

GATEWAY = r"""#!/bin/sh
# An SSH gateway that allows neither scp nor sftp{pty_note}.
case "$SSH_ORIGINAL_COMMAND" in
  scp\ *|*sftp-server*|internal-sftp*)
    echo "gateway: scp and sftp are not supported" >&2; exit 1;;
esac
{pty_check}
if [ -n "$SSH_ORIGINAL_COMMAND" ]; then exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"; fi
echo "Welcome to the test gateway (pod $(hostname))"
exec /bin/bash --noprofile --norc -i
"""
PTY_CHECK = r"""if [ ! -t 0 ]; then
  echo "Error: Your SSH client doesn't support PTY" >&2; exit 1
fi"""


def available() -> bool:
    return os.path.exists(SSHD) and shutil.which("ssh") is not None and \
        shutil.which("ssh-keygen") is not None and os.geteuid() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sshd:
    def __init__(self, root: Path, mode: str = "plain") -> None:
        assert mode in MODES, mode
        self.root, self.mode = root, mode
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host_key = root / "host_ed25519"
        self.client_key = root / "client_ed25519"
        for key in (self.host_key, self.client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                           check=True)
        (root / "authorized_keys").write_text(
            (root / "client_ed25519.pub").read_text())
        lines = [f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}",
                 f"PidFile {root / 'sshd.pid'}", f"AuthorizedKeysFile {root / 'authorized_keys'}",
                 "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
                 "StrictModes no", "PermitRootLogin prohibit-password", "PrintMotd no",
                 "LogLevel VERBOSE", "MaxStartups 100:30:200", "MaxSessions 50"]
        if mode == "plain":
            lines.append("Subsystem sftp internal-sftp")
        else:
            script = root / "gateway.sh"
            script.write_text(GATEWAY.format(
                pty_note=", and refuses commands without a PTY" if mode == "pty-only" else "",
                pty_check=PTY_CHECK if mode == "pty-only" else ""))
            script.chmod(0o755)
            lines.append(f"ForceCommand {script}")
        self.config = root / "sshd_config"
        self.config.write_text("\n".join(lines) + "\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.log_path = root / "sshd.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not start: {self.log()}") from None
                time.sleep(0.05)

    @property
    def options(self) -> tuple[str, ...]:
        return ("StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "LogLevel=ERROR")

    def ssh_argv(self, *extra: str) -> list[str]:
        argv = ["ssh", "-p", str(self.port), "-i", str(self.client_key), "-o", "BatchMode=yes"]
        for o in self.options:
            argv += ["-o", o]
        return argv + list(extra) + ["root@127.0.0.1"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
