"""Large, valid episodes written straight into a store, in the recorder's own format (its
schema, framing and metadata), for tests that need hundreds of megabytes fast: one real JPEG
is reused for every frame, so nothing is encoded per frame."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import simplejpeg

from brain.durable import atomic_write_json
from brain.rlds.logformat import encode_frame, encode_step
from brain.rlds.schema import step_record
from brain.rlds.store import EPISODE_FILE, FORMAT_VERSION, LOG_FILE
from brain.rlds.tfrecord import append_record

STATE_NAMES = ["speed", "yaw_rate", "steering_applied", "throttle_applied"]


def noisy_jpeg(shape: tuple[int, int, int] = (480, 640, 3), seed: int = 0) -> bytes:
    """A JPEG that does not compress well (~100 KB at 640x480), like a busy camera frame."""
    noise = np.random.default_rng(seed).integers(-12, 12, shape)
    img = (128 + noise).astype(np.uint8)
    return simplejpeg.encode_jpeg(img, quality=75, colorspace="RGB")


def write_episode(episodes_dir: Path, episode_id: str, *, steps: int, jpeg: bytes,
                  shape: tuple[int, int, int] = (480, 640, 3), steps_per_frame: int = 2,
                  hz: float = 50.0, throttle: float = 0.2) -> Path:
    path = Path(episodes_dir) / episode_id
    path.mkdir(parents=True)
    t0, wall0 = time.monotonic() - steps / hz - 10, time.time() - steps / hz - 10
    size = crc = frames = 0
    with open(path / LOG_FILE, "wb") as fh:
        for i in range(steps):
            t = t0 + i / hz
            new = i % steps_per_frame == 0
            if new:
                n, crc = append_record(fh, encode_frame(frames, t, shape, jpeg), crc)
                size += n
                frames += 1
            n, crc = append_record(fh, encode_step(step_record(
                i, t_mono=t, t_wall=wall0 + i / hz, state=[0.0] * len(STATE_NAMES),
                action=(0.0, throttle), reward=0.01, discount=1.0, is_terminal=False,
                mode="manual", language_instruction="", frame=frames - 1, frame_skew_ms=0.0,
                frame_new=new)), crc)
            size += n
    atomic_write_json(path / EPISODE_FILE, {
        "format": FORMAT_VERSION, "id": episode_id, "status": "complete",
        "started_wall": wall0, "ended_wall": wall0 + steps / hz, "jpeg_quality": 75,
        "image_shape": list(shape), "end_reason": "stopped", "steps": steps,
        "frames": frames, "log_bytes": size, "log_crc32c": crc,
        "metadata": {"state_names": STATE_NAMES, "action_names": ["steering", "throttle"],
                     "robot_profile": "sim", "operator": "factory"}})
    return path
