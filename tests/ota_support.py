"""Shared pieces of the OTA tests: the reproducible vectors (ota/make_vectors.py), bundles built
with the real `brain bundle build`, and a daemon that trusts the vectors' development key."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.daemon_support import DaemonProcess
from tests.poll import wait_until

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "brain" / "models" / "seed"


def make_vectors(out: Path) -> dict[str, Any]:
    subprocess.run([sys.executable, str(ROOT / "ota" / "make_vectors.py"), str(out)],
                   check=True, capture_output=True, timeout=300)
    return json.loads((out / "cases.json").read_text())


def trusted_dir(vectors: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    (into / "dev.pub").write_bytes((vectors / "dev.pub").read_bytes())
    return into


def brain(*args: str, env: dict[str, str] | None = None, check: bool = True,
          timeout: float = 300) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "brain", *args], capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, **(env or {})})
    if check and r.returncode != 0:
        raise AssertionError(f"brain {' '.join(args)} -> {r.returncode}: {r.stderr}")
    return r


def build(model_dir: Path, key: Path, out: Path, version: str, release: int,
          *extra: str) -> Path:
    brain("bundle", "build", str(model_dir), "--key", str(key), "--version", version,
          "--release", str(release), "--out", str(out), "--name", "test", *extra)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ota_daemon(state: Path, keys_dir: Path, *, api_port: int | None = None,
               env: dict[str, str] | None = None) -> DaemonProcess:
    full = {"BRAIN_OTA_TRUSTED_KEYS_DIR": str(keys_dir), "BRAIN_OTA_PROBATION_S": "0.6",
            "BRAIN_TEST_HOOKS": "1", **(env or {})}
    if api_port is not None:
        full.update({"BRAIN_API_ENABLED": "1", "BRAIN_API_PORT": str(api_port),
                     "BRAIN_API_MDNS": "0"})
    return DaemonProcess(state, "--sim", env=full)


def settled(d: DaemonProcess, timeout: float = 60) -> dict[str, Any]:
    """The OTA status once no trial is running."""
    return wait_until(lambda: json.loads(d.cli("ota", "status", "--json").stdout),
                      lambda st: st["phase"] not in ("staged", "trial"), timeout=timeout,
                      interval=0.1, what="the OTA manager to settle")
