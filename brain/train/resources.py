"""The trainer's resource monitor: it yields to the robot before the robot suffers.

Levels (the highest that any reading reaches) and what the trainer does:

- NORMAL: none of the below; trains.
- WARNING: CPU >= 70 C, memory used >= 80 %, free disk < 1 GiB, or the soft temperature limit
  active; trains, and says so.
- CRITICAL: CPU >= 80 C, memory used >= 90 %, free disk < 512 MiB, throttled now, or the robot
  driving (manual or autonomous) unless `train_while_driving`; checkpoints and pauses until it
  clears.
- EMERGENCY: CPU >= 85 C, memory used >= 95 %, free disk < 128 MiB, or under-voltage now;
  checkpoints and stops.

Sources: thermal zones under `<sysfs>/class/thermal/thermal_zone*/temp` (millidegrees; the
hottest counts), `<proc>/meminfo` (MemTotal, MemAvailable), free space in the state directory,
`vcgencmd get_throttled` where it exists (a Raspberry Pi), and the daemon's mode over its control
socket. The roots are parameters (`train.sysfs_root`, `train.procfs_root`) so tests and
containers point them at a directory tree of their own.
"""

from __future__ import annotations

import enum
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class Level(enum.IntEnum):
    NORMAL = 0
    WARNING = 1
    CRITICAL = 2
    EMERGENCY = 3


@dataclass(frozen=True)
class Thresholds:
    temp_c: tuple[float, float, float] = (70.0, 80.0, 85.0)  # warning, critical, emergency
    mem_used_pct: tuple[float, float, float] = (80.0, 90.0, 95.0)
    disk_free_mb: tuple[float, float, float] = (1024.0, 512.0, 128.0)


@dataclass
class Reading:
    level: Level
    reasons: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)


DRIVING_MODES = ("manual", "autonomous_driving")
UNDER_VOLTAGE_NOW, THROTTLED_NOW, SOFT_TEMP_LIMIT_NOW = 0x1, 0x4, 0x8


class ResourceMonitor:
    def __init__(self, state_dir: Path, *, sysfs_root: Path = Path("/sys"),
                 procfs_root: Path = Path("/proc"),
                 daemon_mode: Callable[[], str | None] = lambda: None,
                 train_while_driving: bool = False, thresholds: Thresholds | None = None,
                 vcgencmd: str | None = None) -> None:
        self.state_dir = state_dir
        self.sysfs_root = sysfs_root
        self.procfs_root = procfs_root
        self.daemon_mode = daemon_mode
        self.train_while_driving = train_while_driving
        self.t = thresholds or Thresholds()
        self.vcgencmd = vcgencmd if vcgencmd is not None else shutil.which("vcgencmd")
        self.worst = Level.NORMAL  # the highest level seen (the field plan's gate)

    def sample(self) -> Reading:
        r = Reading(Level.NORMAL)

        def raise_to(level: Level, why: str) -> None:
            r.reasons.append(f"{level.name}: {why}")
            r.level = max(r.level, level)

        temp = self.cpu_temp()
        r.values["cpu_temp_c"] = temp
        if temp is not None:
            self._grade(temp, self.t.temp_c, f"CPU {temp:.1f} C", raise_to)
        mem = self.mem_used_pct()
        r.values["mem_used_pct"] = mem
        if mem is not None:
            self._grade(mem, self.t.mem_used_pct, f"memory {mem:.0f} % used", raise_to)
        free_mb = shutil.disk_usage(self.state_dir).free / 2**20
        r.values["disk_free_mb"] = round(free_mb)
        for level, limit in zip((Level.WARNING, Level.CRITICAL, Level.EMERGENCY),
                                self.t.disk_free_mb, strict=True):
            if free_mb < limit:
                raise_to(level, f"{free_mb:.0f} MiB free in {self.state_dir}")
        bits = self.throttled()
        r.values["throttled"] = bits
        if bits is not None:
            if bits & UNDER_VOLTAGE_NOW:
                raise_to(Level.EMERGENCY, "under-voltage now")
            if bits & THROTTLED_NOW:
                raise_to(Level.CRITICAL, "CPU throttled now")
            if bits & SOFT_TEMP_LIMIT_NOW:
                raise_to(Level.WARNING, "soft temperature limit active")
        mode = self.daemon_mode()
        r.values["robot_mode"] = mode
        if mode in DRIVING_MODES and not self.train_while_driving:
            raise_to(Level.CRITICAL, f"robot is driving ({mode})")
        self.worst = max(self.worst, r.level)
        return r

    @staticmethod
    def _grade(value: float, limits: tuple[float, float, float], what: str,
               raise_to: Callable[[Level, str], None]) -> None:
        for level, limit in zip((Level.EMERGENCY, Level.CRITICAL, Level.WARNING),
                                reversed(limits), strict=True):
            if value >= limit:
                raise_to(level, what)
                return

    def cpu_temp(self) -> float | None:
        temps = []
        for zone in sorted((self.sysfs_root / "class" / "thermal").glob("thermal_zone*")):
            try:
                temps.append(int((zone / "temp").read_text().strip()) / 1000.0)
            except (OSError, ValueError):
                continue
        return max(temps) if temps else None

    def mem_used_pct(self) -> float | None:
        try:
            fields = dict(line.split(":", 1) for line in
                          (self.procfs_root / "meminfo").read_text().splitlines() if ":" in line)
            total = int(fields["MemTotal"].split()[0])
            available = int(fields["MemAvailable"].split()[0])
        except (OSError, KeyError, ValueError, IndexError):
            return None
        return 100.0 * (total - available) / total if total else None

    def throttled(self) -> int | None:
        if not self.vcgencmd:
            return None
        try:
            out = subprocess.run([self.vcgencmd, "get_throttled"], capture_output=True,
                                 text=True, timeout=5).stdout
            return int(out.strip().split("=")[1], 16)
        except (OSError, subprocess.SubprocessError, IndexError, ValueError):
            return None
