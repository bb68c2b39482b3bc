"""`brain validate-hardware`: the field plan's phase-1 gate, with every measurement logged.

Gate: camera and PCA9685 detected; camera timestamps consistent with the loop clock within
5 ms; battery and thermal OK. The robot is connected with `make_robot(cfg)` and ticked at
drive_hz for a couple of seconds, calling read() and write(NEUTRAL) on absolute deadlines.

Skew. For each distinct frame we log the distance from its `t_capture` to the nearest tick
(how well frames line up with the steps they are recorded with) and its age when the loop
first saw it. A free-running camera at 30 fps against a 50 Hz loop is up to half a period
(10 ms) from the nearest tick by geometry alone, so that distance is logged but not gated.
What a clock mismatch does show is causality: a frame stamped *after* the tick that first
read it is in the loop clock's future. So the gated skew is the largest such lead
(t_capture − read time, clipped at 0); a camera on another clock (CLOCK_BOOTTIME after a
suspend, wall time) fails it, or fails the staleness bound when its clock is behind.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brain.config import Config
from brain.diag.health import FAIL, OK, WARN, Check, check_cpu_temperature, check_throttling
from brain.hardware.robot import NEUTRAL, Robot, RobotError

SKEW_LIMIT_MS = 5.0
STALE_LIMIT_MS = 1000.0  # a frame older than this at first sight: stalled camera or clock behind
POWER_SUPPLY = Path("/sys/class/power_supply")


def measure_skew(robot: Robot, hz: float, duration_s: float,
                 clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Tick `robot` at `hz` for `duration_s`; per-frame timing against the tick times."""
    period = 1.0 / hz
    ticks: list[float] = []
    frames: dict[int, dict[str, float]] = {}
    lateness: list[float] = []
    start = clock()
    n = int(duration_s * hz)
    for k in range(n):
        deadline = start + k * period
        now = clock()
        if deadline > now:
            time.sleep(deadline - now)
        lateness.append(max(0.0, clock() - deadline))
        obs = robot.read()
        ticks.append(obs.t)
        robot.write(NEUTRAL)
        f = obs.frame
        if f is not None and f.seq not in frames:
            frames[f.seq] = {"seq": f.seq, "t_capture": f.t_capture, "t_first_read": obs.t}
    robot.neutral()
    rows = []
    for fr in sorted(frames.values(), key=lambda r: r["seq"]):
        nearest = min(ticks, key=lambda t: abs(t - fr["t_capture"]))
        rows.append({**fr,
                     "nearest_tick_ms": abs(nearest - fr["t_capture"]) * 1000,
                     "age_at_first_read_ms": (fr["t_first_read"] - fr["t_capture"]) * 1000,
                     "lead_ms": max(0.0, fr["t_capture"] - fr["t_first_read"]) * 1000})

    def stats(key: str) -> dict[str, float]:
        vals = [r[key] for r in rows]
        if not vals:
            return {}
        return {"p50": statistics.median(vals), "max": max(vals), "min": min(vals)}

    return {
        "hz": hz, "duration_s": duration_s, "ticks": len(ticks),
        "tick_lateness_ms": {"p50": statistics.median(lateness) * 1000,
                             "max": max(lateness) * 1000} if lateness else {},
        "frames": len(rows),
        "nearest_tick_ms": stats("nearest_tick_ms"),
        "age_at_first_read_ms": stats("age_at_first_read_ms"),
        "skew_ms": max((r["lead_ms"] for r in rows), default=0.0),
        "per_frame": rows,
    }


def check_battery(cfg: Config, root: Path = POWER_SUPPLY) -> Check:
    """A battery the kernel knows (UPS HAT, fuel gauge) through the power_supply class."""
    for supply in sorted(root.glob("*")):
        try:
            if (supply / "type").read_text().strip() != "Battery":
                continue
            cap = int((supply / "capacity").read_text().strip())
        except (OSError, ValueError):
            continue
        detail = f"{supply.name}: {cap} %"
        if cap < 20:
            return Check("battery", FAIL, detail + ": charge it before driving")
        return Check("battery", WARN if cap < 40 else OK, detail)
    where = "simulator" if cfg.profile == "sim" else f"no battery under {root}"
    return Check("battery", WARN, f"not measured ({where})")


def _skew_check(m: dict[str, Any], expected_fps: float) -> Check:
    if m["frames"] == 0:
        return Check("timestamp_skew", FAIL, f"no camera frame in {m['duration_s']:g} s")
    want = 0.5 * expected_fps * m["duration_s"]
    detail = (f"skew {m['skew_ms']:.2f} ms (limit {SKEW_LIMIT_MS:g}); {m['frames']} frames, "
              f"nearest tick p50 {m['nearest_tick_ms']['p50']:.2f} ms, age at first read "
              f"p50 {m['age_at_first_read_ms']['p50']:.1f} ms")
    if m["skew_ms"] > SKEW_LIMIT_MS:
        return Check("timestamp_skew", FAIL, f"frames stamped in the loop clock's future: "
                     f"{detail}; the camera is on another clock")
    if m["age_at_first_read_ms"]["max"] > STALE_LIMIT_MS:
        return Check("timestamp_skew", FAIL, f"frames older than {STALE_LIMIT_MS:g} ms at "
                     f"first read: {detail}; camera stalled or its clock is behind")
    if m["frames"] < want:
        return Check("timestamp_skew", WARN, f"only {m['frames']} frames (expected about "
                     f"{expected_fps * m['duration_s']:.0f}): {detail}")
    return Check("timestamp_skew", OK, detail)


def validate_hardware(cfg: Config, duration_s: float = 2.0,
                      make_robot: Callable[[Config], Robot] | None = None) -> dict[str, Any]:
    """Run the gate; returns the log document (its "ok" is the gate's verdict)."""
    from brain.diag.health import check_camera, check_pca9685

    if make_robot is None:
        from brain.hardware import factory

        make_robot = factory.make_robot
    gate: list[Check] = [check_camera(cfg), check_pca9685(cfg)]
    measurements: dict[str, Any] = {}
    robot = make_robot(cfg)
    try:
        robot.connect()
    except RobotError as e:
        gate.append(Check("timestamp_skew", FAIL, f"robot did not connect: {e}"))
    else:
        try:
            m = measure_skew(robot, float(cfg.drive_hz), duration_s)
            measurements["skew"] = m
            gate.append(_skew_check(m, robot.spec.camera_fps))
        except RobotError as e:
            gate.append(Check("timestamp_skew", FAIL, f"robot failed while ticking: {e}"))
    finally:
        robot.close()
    gate.append(check_battery(cfg))
    gate.append(check_cpu_temperature())
    gate.append(check_throttling())
    return {
        "ok": all(c.status != FAIL for c in gate),
        "profile": cfg.profile,
        "config": cfg.source,
        "host": platform.node(),
        "machine": platform.machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "limits": {"skew_ms": SKEW_LIMIT_MS, "stale_ms": STALE_LIMIT_MS},
        "gate": [c.__dict__ for c in gate],
        "measurements": measurements,
    }


def write_log(doc: dict[str, Any], path: str | Path) -> None:
    from brain.durable import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(doc, indent=2, default=str).encode() + b"\n")


def format_text(doc: dict[str, Any]) -> str:
    lines = [f"{g['status'].upper():4}  {g['name']:<15} {g['detail']}" for g in doc["gate"]]
    failed = [g["name"] for g in doc["gate"] if g["status"] == FAIL]
    lines.append(f"gate {'FAILED: ' + ', '.join(failed) if failed else 'passed'} "
                 f"(profile {doc['profile']})")
    return "\n".join(lines)


__all__ = ["validate_hardware", "measure_skew", "write_log", "format_text", "check_battery",
           "OK", "WARN", "FAIL"]
