"""Serial peripheral reader, against a scripted device on a pseudo-terminal pair.

`os.openpty()` gives a real tty: pyserial opens the slave side by path exactly as it opens
/dev/ttyACM0 on the robot (termios, baud setting, select-based reads), and the test writes the
device's bytes into the master side. Only the UART wires are missing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from brain.hardware.robot import DeviceNotFound
from brain.hardware.serial_peripheral import PeripheralReading, SerialPeripheral
from tests.poll import wait_until


@pytest.fixture
def pty_device() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    yield master, path
    os.close(master)
    os.close(slave)


def wait_for(dev: SerialPeripheral, cond: Callable[[PeripheralReading], bool]
             ) -> PeripheralReading:
    return wait_until(dev.read, cond, timeout=5.0, what="the serial reading")


def test_parses_lines_counts_garbage_and_joins_partial_lines(pty_device: tuple[int, str]) -> None:
    master, path = pty_device
    dev = SerialPeripheral(path, 115200)
    dev.open()
    try:
        os.write(master, b"\x00\xffboot noise\r\n")  # garbage at start-up
        os.write(master, b"ENC 100 1000000\r\n")
        os.write(master, b"ENC 12x 5\n")  # bad integer
        os.write(master, b"IMU 0.1 0.2 9.81 0.01 -0.02 nan\n")  # not finite: bad
        os.write(master, b"IMU 0.1 0.2 9.81 0.01 -0.02 0.5\n")
        os.write(master, b"ENC 150 1")  # partial line: must wait for the rest
        r = wait_for(dev, lambda r: r.good_lines == 2 and r.bad_lines == 3)
        assert r.enc_ticks == 100 and r.imu == (0.1, 0.2, 9.81, 0.01, -0.02, 0.5)
        assert r.t_imu > 0 and r.t_enc > 0
        os.write(master, b"500000\n")  # rest of "ENC 150 1500000"
        r = wait_for(dev, lambda r: r.enc_ticks == 150)
        assert r.enc_rate_tps == pytest.approx(100.0)  # 50 ticks in 0.5 s
        assert r.bad_lines == 3
    finally:
        dev.close()
    dev.close()  # twice is fine


def test_long_garbage_without_newline_is_dropped(pty_device: tuple[int, str]) -> None:
    master, path = pty_device
    dev = SerialPeripheral(path)
    dev.open()
    try:
        os.write(master, b"x" * 600)
        wait_for(dev, lambda r: r.bad_lines >= 1)
        os.write(master, b"\nENC 7 10\n")
        r = wait_for(dev, lambda r: r.enc_ticks == 7)
        assert r.good_lines == 1
    finally:
        dev.close()


def test_encoder_micros_wraparound() -> None:
    dev = SerialPeripheral("/dev/null-unused")
    assert dev.handle_line(b"ENC 0 4294967000", 1.0)
    assert dev.handle_line(b"ENC 10 704", 1.1)  # 1000 µs later, across the uint32 wrap
    assert dev.read().enc_rate_tps == pytest.approx(10_000.0)
    assert not dev.handle_line(b"IMU 1 2 3", 1.2)
    assert not dev.handle_line(b"FOO 1", 1.3)
    assert dev.read().bad_lines == 2


def test_missing_port_names_path(tmp_path: os.PathLike[str]) -> None:
    missing = os.path.join(tmp_path, "ttyUSB9")
    dev = SerialPeripheral(missing)
    with pytest.raises(DeviceNotFound, match=f"{missing}: no such serial port"):
        dev.open()
    dev.close()
