"""`brain diag bundle`: one tarball with what support needs to see.

Contents: versions.json (python, platform, installed packages), config.json (the effective
configuration, secrets redacted), health.json, status.json (daemon status with the lateness
histogram), logs/ (the journal of brain.service, else the files in the logs dir) and
manifest.json listing what went in and what could not be collected. Collecting never stops at
the first problem: a bundle from a broken robot is the one that matters.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brain import __version__
from brain.config import Config, config_as_dict

SECRET_WORDS = ("token", "key", "secret", "password")
REDACTED = "<redacted>"
LOG_TAIL_BYTES = 1 << 20
JOURNAL_LINES = 2000


def redact(obj: Any) -> Any:
    """Copy of `obj` with the value of every key naming a secret replaced (empty ones kept,
    so the reader still sees the key was unset)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            secret = any(w in str(k).lower() for w in SECRET_WORDS)
            out[k] = REDACTED if secret and v not in ("", None) else redact(v)
        return out
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def versions() -> dict[str, Any]:
    pkgs = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()
            if d.metadata["Name"]}
    return {"brain": __version__, "python": sys.version, "executable": sys.executable,
            "platform": platform.platform(), "machine": platform.machine(),
            "packages": dict(sorted(pkgs.items(), key=lambda kv: kv[0].lower()))}


def logs_dir(cfg: Config) -> Path:
    if os.environ.get("LOGS_DIRECTORY"):  # set by systemd's LogsDirectory=
        return Path(os.environ["LOGS_DIRECTORY"].split(":")[0])
    if Path("/var/log/brain").is_dir():
        return Path("/var/log/brain")
    return cfg.state_path / "logs"


def journal(unit: str = "brain") -> str | None:
    """The unit's recent journal, or None when there is no journal to read."""
    if shutil.which("journalctl") is None:
        return None
    try:
        res = subprocess.run(["journalctl", "-u", unit, "-n", str(JOURNAL_LINES), "--no-pager",
                              "-o", "short-iso-precise"], capture_output=True, text=True,
                             timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = res.stdout
    if res.returncode != 0 or not out.strip() or out.startswith("-- No entries --"):
        return None
    return out


def _tail(path: Path, limit: int = LOG_TAIL_BYTES) -> bytes:
    with path.open("rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - limit))
        return fh.read()


def collect(cfg: Config, client: Any,
            journal_reader: Callable[[], str | None] | None = None) -> dict[str, bytes]:
    """Member name -> content. Every collector's failure is noted in the manifest."""
    from brain.diag.health import report, run_checks

    members: dict[str, bytes] = {}
    problems: dict[str, str] = {}

    def add_json(name: str, build: Callable[[], Any]) -> None:
        try:
            members[name] = json.dumps(build(), indent=2, default=str).encode() + b"\n"
        except Exception as e:  # noted, and the bundle goes on
            problems[name] = f"{type(e).__name__}: {e}"

    add_json("versions.json", versions)
    add_json("config.json", lambda: {"source": cfg.source,
                                     "config": redact(config_as_dict(cfg))})
    add_json("health.json",
             lambda: report(run_checks(cfg, lambda: client.call("status"), quick=True)))
    add_json("status.json", lambda: client.call("status", histogram=True))

    text = (journal_reader or journal)()
    if text is not None:
        members["logs/journal-brain.txt"] = text.encode()
    else:
        d = logs_dir(cfg)
        files = sorted(p for p in d.glob("**/*") if p.is_file()) if d.is_dir() else []
        for p in files:
            try:
                members[f"logs/{p.relative_to(d)}"] = _tail(p)
            except OSError as e:
                problems[f"logs/{p.relative_to(d)}"] = str(e)
        if not files:
            problems["logs"] = f"no journal for brain.service and no files in {d}"
    manifest = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
                "members": sorted(members), "not_collected": problems}
    members["manifest.json"] = json.dumps(manifest, indent=2).encode() + b"\n"
    return members


def write_bundle(members: dict[str, bytes], out: str | Path) -> None:
    """A tar.gz under a top directory named after the file, written atomically."""
    from brain.durable import atomic_write_bytes

    out = Path(out)
    top = out.name.removesuffix(".gz").removesuffix(".tar").removesuffix(".tgz") or "brain-diag"
    buf = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in sorted(members.items()):
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mtime, info.mode = len(data), int(now), 0o640
            tar.addfile(info, io.BytesIO(data))
    # Owner-only: logs and status can say more about the robot than its owner wants shared.
    atomic_write_bytes(out, buf.getvalue(), mode=0o600)
