"""Daemon start-up: from exec to READY=1 (the unit's TimeoutStartSec and the field plan's
"boots headless" both depend on it), against the bare interpreter's start-up in the same run.

Each figure is the median of --runs starts of a fresh `brain run --sim` in a new state dir,
with the API off and on, timed by a NOTIFY_SOCKET listener as systemd would. The baseline is
`python -c pass` run as many times. Goal: READY=1 within 3 s.

    python bench/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.table import Machine, Row, add_rows_argument, finish  # noqa: E402
from tests.harness.notify import NotifyListener  # noqa: E402

GOAL_S = 3.0


def interpreter_start() -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.monotonic() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def daemon_ready(api: bool) -> float:
    with NotifyListener() as listener, tempfile.TemporaryDirectory() as state:
        env = {**os.environ, **listener.env(), "BRAIN_STATE_DIR": state,
               "BRAIN_API_ENABLED": "1" if api else "0", "BRAIN_API_PORT": str(free_port()),
               "BRAIN_API_MDNS": "0"}
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "brain", "run", "--sim"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ready = listener.wait_for("READY", "1", timeout=60)
        finally:
            proc.terminate()
            proc.wait(30)
        return ready.t - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    add_rows_argument(ap)
    args = ap.parse_args()
    machine = Machine()
    print(f"start-up: {args.runs} runs each, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    base = statistics.median(interpreter_start() for _ in range(args.runs))
    print(f"  baseline python -c pass             {base:6.3f} s")
    rows = []
    for api in (False, True):
        t = statistics.median(daemon_ready(api) for _ in range(args.runs))
        verdict = "holds" if t <= GOAL_S else "MISSED"
        print(f"  brain run --sim to READY=1 {'(API on) ' if api else '(API off)'} {t:6.3f} s"
              f"  ratio {t / base:5.1f}x  goal <= {GOAL_S:g} s: {verdict}")
        rows.append(Row("startup", f"exec to READY=1, API {'on' if api else 'off'} (median of "
                        f"{args.runs})", t, "s", f"<= {GOAL_S:g} s", t <= GOAL_S, base,
                        "python -c pass"))
    return finish(rows, args.rows, machine)


if __name__ == "__main__":
    sys.exit(main())
