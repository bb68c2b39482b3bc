"""The Pi camera through picamera2, feeding a `FrameSlot` from a capture thread.

picamera2 exists only on Raspberry Pi OS (apt `python3-picamera2`, not on PyPI), so it is
imported when a camera is started, never at module import.

Timestamps: picamera2 reports `SensorTimestamp` in nanoseconds on CLOCK_MONOTONIC, the clock
of `time.monotonic()` (picamera2's own `capture_request(flush=True)` compares it with
`time.monotonic_ns()`). It marks the start of readout of the first row, so that row was exposed
during the `ExposureTime` (µs) before it; we stamp frames with the middle of that exposure.

Dropped frames: the sensor runs at a fixed frame duration, so a gap between consecutive sensor
timestamps of k frame durations means k-1 frames were lost (the capture thread fell behind or
the pipeline dropped them). `Frame.seq` counts sensor frames, gaps included.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from brain.hardware.robot import DeviceNotFound, Frame, FrameSlot, RobotError

log = logging.getLogger(__name__)

INSTALL_HINT = ("picamera2 is not importable: install it with `sudo apt install "
                "python3-picamera2` and create the virtualenv with --system-site-packages "
                "(python3 -m venv --system-site-packages .venv)")


def import_picamera2() -> Any:
    try:
        return importlib.import_module("picamera2")
    except ImportError as e:
        raise RobotError(f"{INSTALL_HINT} ({e})") from None


def sensor_to_monotonic(sensor_timestamp_ns: int, exposure_us: float) -> float:
    """Middle of the first row's exposure, in `time.monotonic()` seconds."""
    return (sensor_timestamp_ns - exposure_us * 500.0) / 1e9


class PiCamera:
    """Captures RGB frames at width x height and fps; publishes them into `slot`."""

    WAIT_S = 0.5  # how long one wait for a frame may block before the stop flag is checked

    def __init__(self, width: int, height: int, fps: float, slot: FrameSlot | None = None,
                 camera_num: int = 0,
                 loader: Callable[[], Any] = import_picamera2) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.slot = slot if slot is not None else FrameSlot()
        self.camera_num = camera_num
        self._loader = loader
        self._cam: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.frames_delivered = 0
        self.dropped = 0  # frames lost, from sensor timestamp gaps
        self.errors = 0  # failed captures (logged, never fatal to the thread)
        self.last_latency_s = float("nan")  # delivery time minus t_capture, newest frame
        self._last_ts_ns: int | None = None
        self._seq = -1

    @property
    def frame_duration_us(self) -> int:
        return int(round(1e6 / self.fps))

    def start(self) -> None:
        mod = self._loader()
        name = f"camera {self.camera_num}"
        try:
            cameras = mod.Picamera2.global_camera_info()
        except Exception as e:  # libcamera failing to enumerate is "no camera" to the user
            raise DeviceNotFound(f"{name}: libcamera could not list cameras: {e}") from None
        if self.camera_num >= len(cameras):
            raise DeviceNotFound(f"{name}: no camera found (libcamera lists {len(cameras)}); "
                                 "check the ribbon cable and `rpicam-hello --list-cameras`")
        try:
            cam = mod.Picamera2(self.camera_num)
        except Exception as e:  # picamera2 raises RuntimeError/IndexError on a busy camera
            raise RobotError(f"{name}: cannot open ({e}); is another process using it?") \
                from None
        try:
            d = self.frame_duration_us
            # picamera2 names formats by libcamera's word order: "BGR888" gives an array
            # whose bytes are R, G, B, i.e. the RGB layout the rest of brain expects.
            config = cam.create_video_configuration(
                main={"size": (self.width, self.height), "format": "BGR888"},
                controls={"FrameDurationLimits": (d, d)}, buffer_count=4)
            cam.configure(config)
            cam.start()
        except Exception as e:
            cam.close()
            raise RobotError(f"{name}: cannot configure {self.width}x{self.height} "
                             f"@ {self.fps} fps: {e}") from None
        self._cam = cam
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="picam-capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        cam = self._cam
        job = None
        while not self._stop.is_set():
            try:
                if job is None:
                    job = cam.capture_request(wait=False)
                # Wait on the same job across timeouts: a new request per timeout would
                # leave the old one to take (and never release) a buffer.
                request = cam.wait(job, timeout=self.WAIT_S)
            except TimeoutError:
                continue
            except Exception:
                self.errors += 1
                log.exception("camera %d: capture failed", self.camera_num)
                job = None
                self._stop.wait(0.1)
                continue
            job = None
            try:
                self._deliver(request)
            except Exception:
                self.errors += 1
                log.exception("camera %d: bad frame", self.camera_num)
            finally:
                request.release()

    def _deliver(self, request: Any) -> None:
        md = request.get_metadata()
        ts = int(md["SensorTimestamp"])
        image = np.ascontiguousarray(request.make_array("main"))  # copies only if padded
        if image.dtype != np.uint8 or image.shape != (self.height, self.width, 3):
            raise RobotError(f"camera {self.camera_num}: got {image.dtype} {image.shape}, "
                             f"expected uint8 {(self.height, self.width, 3)}")
        step = 1
        if self._last_ts_ns is not None:
            period_ns = 1000.0 * float(md.get("FrameDuration") or self.frame_duration_us)
            step = max(1, round((ts - self._last_ts_ns) / period_ns))
            self.dropped += step - 1
        self._last_ts_ns = ts
        self._seq += step
        t_capture = sensor_to_monotonic(ts, float(md.get("ExposureTime", 0)))
        self.slot.publish(Frame(image=image, t_capture=t_capture, seq=self._seq))
        self.frames_delivered += 1
        self.last_latency_s = time.monotonic() - t_capture

    def stop(self) -> None:
        """Stop capturing and release the camera. Safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.WAIT_S + 2.0)
            self._thread = None
        cam, self._cam = self._cam, None
        if cam is not None:
            try:
                cam.stop()
            finally:
                cam.close()
