"""Pi camera driver, against a stand-in `picamera2` module (see fakes/picamera2_standin.py).

The real picamera2 needs libcamera and a Pi, so the module boundary is the lowest seam we can
reach: the stand-in takes the calls the driver makes and delivers frames with the metadata the
real one reports; the test plays the sensor (timestamps, exposure, gaps).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest

from brain.hardware.picam import PiCamera, import_picamera2, sensor_to_monotonic
from brain.hardware.robot import DeviceNotFound, Frame, RobotError
from tests.fakes import picamera2_standin

StandIn = type[picamera2_standin.Picamera2]


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    monkeypatch.setitem(sys.modules, "picamera2", picamera2_standin.make_module())
    yield picamera2_standin.Picamera2


def wait_frame(cam: PiCamera, seq_after: int) -> Frame:
    frame = cam.slot.wait_newer(seq_after, timeout=5.0)
    assert frame is not None, "no frame published"
    return frame


def test_configures_rgb_size_and_frame_duration(standin: StandIn) -> None:
    cam = PiCamera(320, 240, 25)
    cam.start()
    try:
        pc = standin.instances[-1]
        assert pc.config is not None
        assert pc.config["main"] == {"size": (320, 240), "format": "BGR888"}
        assert pc.config["controls"]["FrameDurationLimits"] == (40_000, 40_000)
        assert pc.started
    finally:
        cam.stop()
    assert not pc.started and pc.closed


def test_frames_timestamps_and_drops(standin: StandIn) -> None:
    cam = PiCamera(64, 48, 30)
    cam.start()
    try:
        pc = standin.instances[-1]
        period = 33_333_000
        t0 = time.monotonic_ns() - 50_000_000
        pc.emit(t0, exposure_us=8000, value=200)
        f0 = wait_frame(cam, -1)
        assert f0.image.shape == (48, 64, 3) and f0.image.dtype == np.uint8
        assert f0.image[0, 0].tolist() == [200, 200, 55]  # R, G, B: no channel swap
        # Middle of the exposure that ended when readout began: t0 - 4 ms, in seconds.
        assert f0.t_capture == pytest.approx((t0 - 4_000_000) / 1e9, abs=1e-9)
        assert abs(time.monotonic() - f0.t_capture) < 5.0  # same clock as time.monotonic()
        pc.emit(t0 + period)
        f1 = wait_frame(cam, f0.seq)
        assert f1.seq == f0.seq + 1 and cam.dropped == 0
        pc.emit(t0 + 4 * period)  # two frames lost in between
        f2 = wait_frame(cam, f1.seq)
        assert f2.seq == f1.seq + 3 and cam.dropped == 2
        pc.emit(t0 + 5 * period + 2_000_000)  # jitter is not a drop
        f3 = wait_frame(cam, f2.seq)
        assert f3.seq == f2.seq + 1 and cam.dropped == 2
        assert cam.frames_delivered == 4
    finally:
        cam.stop()
    assert pc.released == 4  # every request went back to the camera


def test_sensor_to_monotonic() -> None:
    assert sensor_to_monotonic(10_000_000_000, 2000) == pytest.approx(9.999)


def test_no_camera_found(standin: StandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(standin, "cameras", [])
    with pytest.raises(DeviceNotFound, match="camera 0: no camera found"):
        PiCamera(64, 48, 30).start()


def test_missing_picamera2_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import raises ImportError
    with pytest.raises(RobotError, match="python3-picamera2.*--system-site-packages"):
        import_picamera2()
