"""`make bench`: every benchmark in `bench/`, one after another, and one table of their figures.

Each script runs in a process of its own with `--rows`, its output streaming through as it runs;
at the end comes one table (each figure, its baseline from the same run, the ratio, the goal and
whether it holds), the machine line and the verdict. Everything is also written to --out
(default `var/bench/<UTC time>/`): `table.txt`, `rows.jsonl` and each script's log.

--seconds sets the length of the timed windows: loop runs per condition, the live recording
runs, twice that for the trainer's daemon windows, a third of it for each API phase; the replays
on the same frames last min(--seconds, 20) s. At the default 30 s the whole suite takes about
11 minutes on this 2-core machine. Exit status 1 if a goal was missed or a script
failed.

    python bench/all.py [--seconds 30] [--only loop,record] [--out DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.table import Machine, Row, format_table, read_rows, verdict  # noqa: E402

# Each script and its arguments for a given --seconds.
BENCHES: dict[str, Callable[[float], list[str]]] = {
    "loop": lambda s: ["--seconds", f"{s:g}"],
    "api": lambda s: ["--seconds", f"{max(s / 3, 5):g}"],
    "record": lambda s: ["--seconds", f"{s:g}", "--replay-seconds", f"{min(s, 20):g}"],
    "startup": lambda s: ["--runs", "5"],
    "ota": lambda s: [],
    "train": lambda s: ["--window", f"{2 * s:g}"],
}


def run_one(name: str, args: list[str], out: Path, rows_path: Path) -> int:
    cmd = [sys.executable, str(ROOT / "bench" / f"{name}.py"), *args, "--rows", str(rows_path)]
    print(f"\n=== bench/{name}.py {' '.join(args)}", flush=True)
    t0 = time.monotonic()
    with open(out / f"{name}.log", "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        rc = proc.wait()
    print(f"=== bench/{name}.py: exit {rc} after {time.monotonic() - t0:.0f} s", flush=True)
    return rc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0,
                    help="length of the timed windows (default 30)")
    ap.add_argument("--only", default=",".join(BENCHES),
                    help=f"comma-separated subset of {','.join(BENCHES)}")
    ap.add_argument("--out", type=Path, help="results directory (default var/bench/<time>)")
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHES]
    if unknown or not names:
        ap.error(f"unknown bench {', '.join(unknown) or '(none)'}; choose from "
                 f"{', '.join(BENCHES)}")
    if not args.seconds > 0:
        ap.error("--seconds must be > 0")
    out = args.out or ROOT / "var" / "bench" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    rows_path.unlink(missing_ok=True)
    machine = Machine()
    failed: list[Row] = []
    for name in names:
        rc = run_one(name, BENCHES[name](args.seconds), out, rows_path)
        if rc not in (0, 1):  # 1 is "a goal missed", and its rows say which
            failed.append(Row(name, f"bench/{name}.py failed (exit {rc}; see {name}.log)",
                              float(rc), "", "runs", False))
    rows = read_rows(rows_path) + failed
    table = "\n".join([format_table(rows), machine.line(), verdict(rows)])
    (out / "table.txt").write_text(table + "\n")
    print(f"\n=== every benchmark, one table ({out / 'table.txt'})\n{table}")
    return 1 if any(r.holds is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
