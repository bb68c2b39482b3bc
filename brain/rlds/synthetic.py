"""Synthetic recording: a phase-locked fake camera and a 50 Hz tick source, for tests, the
interop check and benchmarks (no simulator needed). Like the simulator's camera, each frame's
capture time equals the t_mono of the tick that triggered it, and frames run at `fps` on average.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from brain.hardware.robot import Frame, FrameSlot
from brain.rlds.recorder import Recorder, StepSample

STATE_NAMES = ("speed", "yaw_rate", "cte")


def sample_images(shape: tuple[int, int, int], count: int = 4, seed: int = 0) -> list[np.ndarray]:
    """A few smooth images (JPEG-friendly, like camera frames) to cycle through."""
    h, w, _ = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for _ in range(count):
        a, b, c = rng.uniform(0.01, 0.1, 3)
        img = np.stack([np.sin(xx * a) * 100 + 120, np.cos(yy * b) * 100 + 120,
                        np.sin((xx + yy) * c) * 100 + 120], axis=-1)
        out.append(img.astype(np.uint8))
    return out


def run_ticks(recorder: Recorder, slot: FrameSlot | None, seconds: float, *, rate_hz: float = 50.0,
              fps: float = 30.0, images: list[np.ndarray] | None = None,
              on_tick: Callable[[int, StepSample], None] | None = None,
              seq_start: int = 0) -> int:
    """Tick at `rate_hz` on absolute deadlines for `seconds`, publishing frames into `slot` and
    handing steps to `recorder`. Returns the next frame seq (to continue a camera across calls)."""
    period = 1.0 / rate_hz
    n = round(seconds * rate_hz)
    seq = seq_start
    start = time.monotonic()
    for i in range(n):
        deadline = start + i * period
        delay = deadline - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t_mono, t_wall = time.monotonic(), time.time()
        step = StepSample(
            t_mono=t_mono, t_wall=t_wall,
            state=np.array([i * 0.01, np.sin(i / 10), np.cos(i / 7)], np.float32),
            action=(float(np.sin(i / 5)), 0.3), reward=1.0, discount=1.0,
            is_terminal=False, mode="manual", language_instruction="follow the track")
        recorder.on_step(step)
        if slot is not None and images and int((i + 1) * fps / rate_hz) > int(i * fps / rate_hz):
            slot.publish(Frame(images[seq % len(images)], t_mono, seq))
            seq += 1
        if on_tick is not None:
            on_tick(i, step)
    return seq
