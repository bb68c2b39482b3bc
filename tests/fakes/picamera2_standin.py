"""A stand-in `picamera2` module with the parts of the real API the driver uses.

picamera2 installs only on Raspberry Pi OS (apt), so tests put this module into `sys.modules`
under the name `picamera2`. It behaves like the real one where the driver depends on it:
`Picamera2.global_camera_info()`, `Picamera2(num)` (IndexError for a camera that is not
there), `create_video_configuration(main=, controls=, buffer_count=)`, `configure`, `start`,
`capture_request(wait=False)` returning a job, `wait(job, timeout)` raising TimeoutError,
requests with `get_metadata()` (SensorTimestamp ns on CLOCK_MONOTONIC, ExposureTime µs,
FrameDuration µs), `make_array("main")` (H x W x 3 uint8, byte order per libcamera's format
name: "BGR888" is R, G, B in memory, "RGB888" is B, G, R) and `release()`, `stop`, `close`.
Frames come from the test: `camera.emit(ts_ns, ...)` stands for the sensor delivering one.
"""

from __future__ import annotations

import queue
import types
from typing import Any

import numpy as np


class Job:
    def __init__(self) -> None:
        self.result: Any = None


class CompletedRequest:
    def __init__(self, cam: Picamera2, metadata: dict[str, Any], image: np.ndarray) -> None:
        self._cam, self._metadata, self._image = cam, metadata, image
        self.released = False

    def get_metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def make_array(self, name: str) -> np.ndarray:
        assert name == "main", name
        assert not self.released, "make_array after release"
        return self._image.copy()  # the real one copies out of the dma buffer too

    def release(self) -> None:
        assert not self.released, "request released twice"
        self.released = True
        self._cam.released += 1


class Picamera2:
    cameras: list[dict[str, Any]] = [
        {"Model": "imx708", "Id": "/base/axi/pcie@120000/rp1/i2c@88000/imx708@1a", "Num": 0}]
    instances: list[Picamera2] = []

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        return list(Picamera2.cameras)

    def __init__(self, camera_num: int = 0) -> None:
        if camera_num >= len(Picamera2.cameras):
            raise IndexError("list index out of range")
        self.camera_num = camera_num
        self.config: dict[str, Any] | None = None
        self.started = self.closed = False
        self.released = 0
        self._frames: queue.Queue[CompletedRequest] = queue.Queue()
        Picamera2.instances.append(self)

    def create_video_configuration(self, main: dict[str, Any], controls: dict[str, Any],
                                   buffer_count: int = 6) -> dict[str, Any]:
        return {"main": dict(main), "controls": dict(controls), "buffer_count": buffer_count}

    def configure(self, config: dict[str, Any]) -> None:
        assert not self.started
        self.config = config

    def start(self) -> None:
        assert self.config is not None, "start before configure"
        self.started = True

    # -- the sensor, driven by the test ------------------------------------------------------
    def emit(self, ts_ns: int, exposure_us: int = 10_000, value: int = 0,
             frame_duration_us: int | None = None, image: np.ndarray | None = None) -> None:
        """One sensor frame: `image` (RGB, H x W x 3) or a flat test pattern of `value`."""
        assert self.config is not None
        w, h = self.config["main"]["size"]
        if image is None:
            image = np.full((h, w, 3), value, dtype=np.uint8)
            image[..., 0] = value  # R
            image[..., 2] = 255 - value  # B, so a channel swap would show
        assert image.shape == (h, w, 3), image.shape
        if self.config["main"].get("format") == "RGB888":
            image = image[..., ::-1].copy()  # libcamera's RGB888 is B, G, R in memory
        d = frame_duration_us or self.config["controls"]["FrameDurationLimits"][0]
        md = {"SensorTimestamp": ts_ns, "ExposureTime": exposure_us, "FrameDuration": d}
        self._frames.put(CompletedRequest(self, md, image))

    # -- capture API ---------------------------------------------------------------------------
    def capture_request(self, wait: Any = None) -> Any:
        assert wait is False, "the driver is expected to use jobs"
        assert self.started
        return Job()

    def wait(self, job: Job, timeout: float | None = None) -> CompletedRequest:
        if job.result is None:
            try:
                job.result = self._frames.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError("Job timed out") from None
        return job.result

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.closed = True


def make_module() -> types.ModuleType:
    mod = types.ModuleType("picamera2", "stand-in for Raspberry Pi's picamera2")
    mod.Picamera2 = Picamera2  # type: ignore[attr-defined]
    Picamera2.instances = []
    return mod
