"""A fake BrainService for the API tests: a real mode state machine and a real deadman.

It reports the daemon's own mode values (`brain.control.modes.Mode`: idle, manual,
autonomous_armed, autonomous_driving, estop) and refuses the transitions the daemon refuses.
A 50 Hz "loop" thread applies the same rules the daemon does: in MANUAL the last teleop command
holds until the deadman expires, then the action goes neutral; teleop_release neutralises at
once. Every change of the applied action is logged with its time on this service's clock
(time.monotonic), so tests can measure link-loss-to-neutral behaviourally.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg

# The daemon's mode values (brain.control.modes.Mode), spelled out so the API tests pin them.
ARMED, DRIVING = "autonomous_armed", "autonomous_driving"
TARGETS = {"idle": "idle", "manual": "manual", "arm": ARMED, "drive": DRIVING,
           "estop": "estop", "reset": "idle"}


class FakeService:
    def __init__(self, name: str = "testbot", device_id: str = "a1b2c3d4e5f60718",
                 deadman_s: float = 0.25, hz: float = 50.0) -> None:
        self.name, self.device_id, self.model = name, device_id, "seed-0"
        self.deadman_s, self.hz = deadman_s, hz
        self.clock = time.monotonic
        self.mode = "idle"
        self.action = (0.0, 0.0)
        self.last_teleop = -math.inf
        self.log: list[tuple[float, str, float, float]] = []  # (t, why, steering, throttle)
        self.teleop_count = 0
        self.last_command_at = -math.inf  # last accepted teleop, kept across releases
        self.ticks = 0
        self.recording: dict[str, Any] | None = None
        self.episodes: dict[str, dict[str, Any]] = {}
        self.export_dir = Path(tempfile.mkdtemp(prefix="fake-exports-"))
        self._jpeg: tuple[bytes, float] | None = None
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = self.clock()
        self._thread = threading.Thread(target=self._loop, name="fake-loop", daemon=True)
        self._thread.start()

    # -- the loop --------------------------------------------------------------------------
    def _apply(self, action: tuple[float, float], why: str) -> None:
        if action != self.action:
            self.action = action
            self.log.append((self.clock(), why, *action))

    def _loop(self) -> None:
        period = 1.0 / self.hz
        next_t = self.clock()
        while not self._stop.is_set():
            next_t += period
            with self._lock:
                now = self.clock()
                self.ticks += 1
                if self.mode == "manual" and now - self.last_teleop > self.deadman_s:
                    self._apply((0.0, 0.0), "deadman")
                elif self.mode == DRIVING:
                    self._apply((round(0.5 * math.sin(self.ticks / 10), 3), 0.3), "policy")
                elif self.mode not in ("manual", DRIVING):
                    self._apply((0.0, 0.0), "mode")
                if self.recording is not None:
                    self.recording["steps"] += 1
                if self.ticks % 5 == 0:
                    img = np.full((48, 64, 3), self.ticks % 255, dtype=np.uint8)
                    self._jpeg = (simplejpeg.encode_jpeg(img, quality=70), now)
            self._stop.wait(max(0.0, next_t - self.clock()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)

    # -- BrainService ----------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        return {"id": self.device_id, "name": self.name, "version": "0.1.0", "model": self.model}

    def status(self) -> dict[str, Any]:
        return {"mode": self.mode, "target_hz": self.hz, "rate_hz": self.hz, "ticks": self.ticks,
                "lateness_ms": {"p50": 0.1, "p99": 0.3, "max": 1.0}, "overruns": 0,
                "model": self.model, "uptime_s": round(self.clock() - self._started, 3),
                "recorder": self._recorder(), "resources": {"cpu": 5.0, "mem": 20.0, "temp": 40}}

    def _recorder(self) -> dict[str, Any]:
        rec = self.recording
        return {"recording": rec is not None, "episode": rec["id"] if rec else None,
                "steps": rec["steps"] if rec else 0}

    def set_mode(self, mode: str) -> dict[str, Any]:
        with self._lock:
            cur = self.mode
            if cur == "estop" and mode not in ("estop", "reset"):
                raise ValueError("e-stop is latched: send reset first")
            if mode == "reset" and cur != "estop":
                raise ValueError(f"cannot reset from {cur}")
            if mode == "drive" and cur not in (ARMED, DRIVING):
                raise ValueError(f"cannot drive from {cur}: arm first")
            new = TARGETS.get(mode)
            if new is None:
                raise ValueError(f"unknown mode request {mode!r}")
            self.mode = new
            if new not in ("manual", DRIVING):
                self._apply((0.0, 0.0), "mode")
        return {"mode": self.mode, "previous": cur}

    def teleop(self, steering: float, throttle: float, client: str) -> None:
        with self._lock:
            self.teleop_count += 1
            if self.mode != "manual":
                return
            self.last_teleop = self.last_command_at = self.clock()
            self._apply((steering, throttle), "teleop")

    def teleop_release(self, client: str) -> None:
        with self._lock:
            self.last_teleop = -math.inf
            if self.mode == "manual":
                self._apply((0.0, 0.0), "release")

    def latest_jpeg(self, max_age_s: float) -> tuple[bytes, float] | None:
        got = self._jpeg
        if got is None or self.clock() - got[1] > max_age_s:
            return None
        return got

    def telemetry(self) -> dict[str, Any]:
        return {"mode": self.mode, "action": {"steering": self.action[0],
                                              "throttle": self.action[1]},
                "lateness_ms": {"p50": 0.1, "p99": 0.3, "max": 1.0}, "rate_hz": self.hz,
                "ticks": self.ticks, "resources": {"cpu": 5.0, "mem": 20.0, "temp": 40},
                "recorder": self._recorder()}

    def episodes_list(self) -> list[dict[str, Any]]:
        return sorted(self.episodes.values(), key=lambda e: e["started"], reverse=True)

    def episodes_start(self, operator: str, language_instruction: str) -> dict[str, Any]:
        with self._lock:
            if self.recording is not None:
                raise ValueError(f"already recording episode {self.recording['id']}")
            eid = f"ep-{len(self.episodes) + 1:04d}-{int(time.time() * 1000) % 100000}"
            self.recording = {"id": eid, "steps": 0, "started": time.time(),
                              "operator": operator, "language_instruction": language_instruction}
            return dict(self.recording)

    def episodes_stop(self) -> dict[str, Any]:
        with self._lock:
            if self.recording is None:
                raise ValueError("not recording")
            ep, self.recording = self.recording, None
            self.episodes[ep["id"]] = ep
            return dict(ep)

    def episodes_delete(self, episode_id: str) -> None:
        with self._lock:
            if episode_id not in self.episodes:
                raise KeyError(f"no episode {episode_id!r}")
            del self.episodes[episode_id]

    def episodes_export(self, ids: list[str], anonymize: bool) -> Path:
        for i in ids:
            if i not in self.episodes:
                raise KeyError(f"no episode {i!r}")
        chosen = [self.episodes[i] for i in ids] if ids else list(self.episodes.values())
        path = self.export_dir / f"export-{int(time.time() * 1000)}.tar"
        with tarfile.open(path, "w") as tar:
            for ep in chosen:
                data = dict(ep, operator="" if anonymize else ep["operator"])
                raw = json.dumps(data).encode()
                info = tarfile.TarInfo(f"{ep['id']}.json")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
        return path

    def diagnostics(self) -> dict[str, Any]:
        return {"ok": True, "checks": [{"name": "loop", "ok": True, "detail": "50 Hz"},
                                       {"name": "camera", "ok": self._jpeg is not None}]}

    def on_change(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    # -- test hooks ------------------------------------------------------------------------
    def rename(self, name: str, model: str | None = None) -> None:
        self.name = name
        if model is not None:
            self.model = model
        for cb in self._callbacks:
            cb()
