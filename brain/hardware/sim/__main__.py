"""`python -m brain.hardware.sim [WIDTH HEIGHT]`: print how long the simulator's pieces take.

A quick measurement for humans, not a benchmark with a baseline (those live in `bench/`).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from brain.hardware.robot import Action
from brain.hardware.sim.tracks import TRACK_NAMES
from brain.hardware.sim.world import SimWorld


def _median_us(fn: object, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6


def main() -> None:
    width, height = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) == 3 else (640, 480)
    print(f"{'track':16} {'raster ms':>9} {'render ms':>9} {'step us':>8} {'teacher us':>10}")
    for name in TRACK_NAMES:
        world = SimWorld(name)
        t0 = time.perf_counter()
        world.camera(width, height)
        build_ms = (time.perf_counter() - t0) * 1e3
        render_ms = _median_us(lambda w=world: w.render(width, height), 50) / 1e3
        act = Action(0.1, 0.4)
        step_us = _median_us(lambda w=world, a=act: w.step(a, 0.02), 500)
        teacher_us = _median_us(world.teacher_action, 500)
        print(f"{name:16} {build_ms:9.0f} {render_ms:9.2f} {step_us:8.1f} {teacher_us:10.1f}")
    print(f"(render at {width}x{height}; medians; raster build includes the per-pixel rays)")


if __name__ == "__main__":
    main()
