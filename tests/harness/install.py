"""A staged `scripts/install.sh` run into a DESTDIR, shared by the install and unit tests.

Fast and offline: the package is built once as a wheel with the dev venv's setuptools and
installed with BRAIN_INSTALL_PIP_ARGS="--no-deps --no-index"; the staged venv is made from the
interpreter behind the dev venv. Dependencies are then borrowed from the dev venv (PYTHONPATH)
when the installed entry point is run.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PREFIX = "/opt/brain"


@functools.cache
def wheel() -> Path:
    out = Path(tempfile.mkdtemp(prefix="brain-wheel-"))
    atexit.register(shutil.rmtree, out, True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(out), str(REPO)], check=True)
    return next(out.glob("brain-*.whl"))


def install_env(destdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRAIN_", "VIRTUAL_ENV"))}
    base_python = getattr(sys, "_base_executable", sys.executable)  # the dev venv's interpreter
    env.update(DESTDIR=str(destdir), PREFIX=PREFIX, PYTHON=base_python,
               BRAIN_INSTALL_SOURCE=str(wheel()),
               BRAIN_INSTALL_PIP_ARGS="--no-deps --no-index")
    env.update(extra)
    return env


def run_script(name: str, destdir: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(REPO / "scripts" / name)], env=install_env(destdir, **extra),
                          capture_output=True, text=True, timeout=300, check=False)


@functools.cache
def staged() -> Path:
    """One DESTDIR with a finished install (treat as read-only; copy it to change it)."""
    dest = Path(tempfile.mkdtemp(prefix="brain-dest-"))
    atexit.register(shutil.rmtree, dest, True)
    res = run_script("install.sh", dest)
    if res.returncode != 0:
        raise RuntimeError(f"install.sh failed ({res.returncode}): {res.stderr}{res.stdout}")
    return dest


def dev_site_packages() -> str:
    return sysconfig.get_paths()["purelib"]
