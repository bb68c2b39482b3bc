"""One table for every benchmark in `bench/`.

Each bench script describes its results as `Row`s: the measured figure, the baseline measured in
the same invocation (or none, where a goal is absolute), the ratio figure/baseline, the goal and
whether it holds. A script prints its own rows as a table at the end and, given `--rows PATH`,
appends them to PATH as JSON lines, which `bench/all.py` (`make bench`) gathers into one table.

The machine line (CPUs, load average, CPU time stolen by the hypervisor) goes with every table:
on a shared VM a CPU-seconds figure is only comparable with a baseline taken under the same load.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO


@dataclass
class Row:
    bench: str  # the script: loop, api, record, startup, ota, train
    figure: str  # what was measured, with its condition
    value: float
    unit: str
    goal: str  # in words, e.g. "<= 1 ms", "ratio <= 0.80", "0"
    holds: bool | None  # None: reported for scale, no goal
    baseline: float | None = None  # the same quantity for the baseline, same invocation
    baseline_what: str = ""  # what the baseline is

    @property
    def ratio(self) -> float | None:
        """figure / baseline (None without a baseline, or a zero one)."""
        if self.baseline is None or self.baseline == 0 or not math.isfinite(self.baseline):
            return None
        return self.value / self.baseline

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Row:
        return cls(**{k: v for k, v in d.items() if k != "ratio"})


def cpu_times() -> dict[str, int]:
    """Whole-machine CPU ticks from /proc/stat (user..steal), for steal over a run."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
    except (OSError, IndexError):
        return {}
    return dict(zip(names, map(int, fields), strict=False))


class Machine:
    """The conditions of a run: CPUs and load before it, CPU stolen by the host during it."""

    def __init__(self) -> None:
        self.load_before = os.getloadavg()
        self.cpus = os.cpu_count() or 0
        self._t0 = cpu_times()

    def line(self) -> str:
        t1 = cpu_times()
        total = sum(t1.values()) - sum(self._t0.values())
        steal = t1.get("steal", 0) - self._t0.get("steal", 0)
        stolen = f"{steal / total:.1%}" if total > 0 else "n/a"
        one, five, fifteen = self.load_before
        return (f"{self.cpus} CPUs; load average before the run {one:.2f} {five:.2f} "
                f"{fifteen:.2f} (1/5/15 min); CPU stolen by the host during it {stolen}")


def _num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "—"
    if x == 0:
        s = "0"
    elif abs(x) >= 100:
        s = f"{x:.0f}"
    elif abs(x) >= 1:
        s = f"{x:.2f}"
    else:
        s = f"{x:.3g}" if abs(x) >= 1e-3 else f"{x:.2e}"
    return f"{s} {unit}".strip()


def format_table(rows: list[Row]) -> str:
    head = ("bench", "figure", "measured", "baseline (same run)", "ratio", "goal", "holds?")
    body = []
    for r in rows:
        base = "—" if r.baseline is None else f"{_num(r.baseline, r.unit)} ({r.baseline_what})"
        ratio = "—" if r.ratio is None else f"{r.ratio:.2f}"
        verdict = {True: "yes", False: "NO", None: "—"}[r.holds]
        body.append((r.bench, r.figure, _num(r.value, r.unit), base, ratio, r.goal, verdict))
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in (head, tuple("-" * w for w in widths), *body)]
    return "\n".join(lines)


def verdict(rows: list[Row]) -> str:
    missed = [r for r in rows if r.holds is False]
    goals = [r for r in rows if r.holds is not None]
    if not missed:
        return f"all {len(goals)} goals hold"
    return f"{len(missed)} of {len(goals)} goals missed: " + "; ".join(
        f"{r.bench}: {r.figure}" for r in missed)


def finish(rows: list[Row], rows_path: str | None, machine: Machine,
           stream: TextIO | None = None) -> int:
    """Print the script's table and machine line (to `stream`, default stdout); append the
    rows to `rows_path` if given. Returns the exit status: 1 when a goal was missed."""
    out = stream or sys.stdout
    print(file=out)
    print(format_table(rows), file=out)
    print(machine.line(), file=out)
    print(verdict(rows), file=out)
    if rows_path:
        with open(rows_path, "a", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r.to_json()) + "\n")
    return 1 if any(r.holds is False for r in rows) else 0


def read_rows(path: Path) -> list[Row]:
    if not path.exists():
        return []
    return [Row.from_json(json.loads(line)) for line in path.read_text().splitlines() if line]


def add_rows_argument(ap: Any) -> None:
    ap.add_argument("--rows", metavar="PATH",
                    help="append this run's table rows to PATH as JSON lines (bench/all.py)")
