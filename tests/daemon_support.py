"""Start and stop a real `brain run` subprocess for integration tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


class DaemonProcess:
    def __init__(self, state_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir
        self.env = {**os.environ, "BRAIN_STATE_DIR": str(state_dir),
                    "BRAIN_API_ENABLED": "0", "BRAIN_LOG_LEVEL": "info", **(env or {})}
        self.log_path = state_dir / "daemon.log"
        state_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "brain", "run", *args],
                                     env=self.env, stdout=self._log, stderr=subprocess.STDOUT)

    def cli(self, *args: str, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "brain", *args], env=self.env,
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"brain {' '.join(args)} -> {r.returncode}: {r.stderr}\n"
                                 f"daemon log:\n{self.log()}")
        return r

    def status(self) -> dict[str, Any]:
        return json.loads(self.cli("status", "--json").stdout)

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            r = self.cli("status", "--json", check=False)
            if r.returncode == 0:
                st = json.loads(r.stdout)
                if st.get("ticks", 0) > 0:
                    return st
            time.sleep(0.1)
        raise AssertionError(f"daemon not ready in {timeout} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")
