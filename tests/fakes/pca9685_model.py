"""A register-level PCA9685 behind a fake Linux I2C bus (the `smbus2.SMBus` seam).

Emulated, following the NXP PCA9685 datasheet (rev. 4):
- a register pointer set by the first byte of every write; further bytes go to successive
  registers only when MODE1.AI (auto-increment) is set, otherwise they all land on the same one;
  reads start at the pointer and follow the same rule (0x45 rolls over to 0x00);
- MODE1 resets to 0x11 (SLEEP | ALLCALL); PRESCALE (0xFE) resets to 30 and ignores writes
  unless SLEEP is set; going to sleep while outputs run sets RESTART, writing 1 to RESTART
  clears it;
- LEDn_ON/OFF (0x06 + 4n) with the full-on/full-off bits (bit 4 of the _H bytes), reset to full
  off; ALL_LED_ON/OFF (0xFA..0xFD) write every channel and read back as 0.

`FakeSMBus` implements the two `SMBus` methods the adapter uses (`i2c_rdwr` with real
`smbus2.i2c_msg` objects, `close`); an address with no device NACKs with EREMOTEIO like
i2c-bcm2835 does. `FakeBuses` is the factory injected in place of `smbus2.SMBus`: unknown bus
numbers raise FileNotFoundError exactly as opening a missing /dev/i2c-N does.
"""

from __future__ import annotations

import ctypes
import errno

from smbus2 import i2c_msg
from smbus2.smbus2 import I2C_M_RD

MODE1, MODE2, PRESCALE = 0x00, 0x01, 0xFE
LED0_ON_L, ALL_LED_ON_L = 0x06, 0xFA
RESTART, AI, SLEEP, ALLCALL = 0x80, 0x20, 0x10, 0x01
FULL = 0x10  # bit 4 of LEDn_ON_H / LEDn_OFF_H


class PCA9685Model:
    def __init__(self, oscillator_hz: float = 25e6) -> None:
        self.oscillator_hz = oscillator_hz
        self.regs = bytearray(256)
        self.regs[MODE1] = SLEEP | ALLCALL
        self.regs[MODE2] = 0x04
        self.regs[0x02:0x06] = bytes([0xE2, 0xE4, 0xE8, 0xE0])
        self.regs[PRESCALE] = 30
        for ch in range(16):
            self.regs[LED0_ON_L + 4 * ch + 3] = FULL
        self.pointer = 0
        self.mode1_writes: list[int] = []  # every value written to MODE1, in order
        self.prescale_rejected = 0  # PRESCALE writes ignored because the chip was awake
        self.history: list[tuple[str, int, float | None]] = []  # ("pulse", channel, µs)

    # -- bus side -----------------------------------------------------------------------
    def _advance(self) -> None:
        if self.regs[MODE1] & AI:
            self.pointer = 0x00 if self.pointer == 0x45 else (self.pointer + 1) & 0xFF

    def write(self, data: bytes) -> None:
        if not data:
            return  # address-only (quick) write: ACK, nothing changes
        self.pointer = data[0]
        for byte in data[1:]:
            self._store(self.pointer, byte)
            self._advance()

    def read(self, n: int) -> bytes:
        out = bytearray()
        for _ in range(n):
            reg = self.pointer
            out.append(0 if ALL_LED_ON_L <= reg <= 0xFD else self.regs[reg])
            self._advance()
        return bytes(out)

    def _store(self, reg: int, value: int) -> None:
        if reg == MODE1:
            self._write_mode1(value)
        elif reg == PRESCALE:
            if self.regs[MODE1] & SLEEP:
                self.regs[PRESCALE] = max(3, value)  # the chip clamps to 3
            else:
                self.prescale_rejected += 1
        elif ALL_LED_ON_L <= reg <= 0xFD:
            for ch in range(16):
                self.regs[LED0_ON_L + 4 * ch + (reg - ALL_LED_ON_L)] = value
        else:
            self.regs[reg] = value
            if LED0_ON_L <= reg <= 0x45 and (reg - LED0_ON_L) % 4 == 3:
                ch = (reg - LED0_ON_L) // 4
                self.history.append(("pulse", ch, self.pulse_us(ch)))

    def _write_mode1(self, value: int) -> None:
        self.mode1_writes.append(value)
        old = self.regs[MODE1]
        new = (value & ~RESTART) | (old & RESTART)
        if value & RESTART:
            new &= ~RESTART  # writing 1 clears it (and restarts the PWM)
        if not (old & SLEEP) and (value & SLEEP) and self.any_output_running():
            new |= RESTART
        self.regs[MODE1] = new & 0xFF

    # -- what a scope on the outputs would show -----------------------------------------------
    @property
    def asleep(self) -> bool:
        return bool(self.regs[MODE1] & SLEEP)

    @property
    def frequency_hz(self) -> float:
        return self.oscillator_hz / (4096 * (self.regs[PRESCALE] + 1))

    def on_off(self, ch: int) -> tuple[int, int]:
        base = LED0_ON_L + 4 * ch
        r = self.regs
        return (r[base] | (r[base + 1] << 8), r[base + 2] | (r[base + 3] << 8))

    def any_output_running(self) -> bool:
        return any(self.pulse_us(ch) is not None for ch in range(16))

    def pulse_us(self, ch: int) -> float | None:
        """High time per period in µs, or None for a flat line (sleep or full off)."""
        on, off = self.on_off(ch)
        if self.asleep or off & 0x1000:
            return None
        if on & 0x1000:
            return None  # full on: flat high, not a pulse
        ticks = ((off & 0x0FFF) - (on & 0x0FFF)) % 4096
        return ticks * 1e6 / (self.frequency_hz * 4096)


class FakeSMBus:
    """One open /dev/i2c-N with devices at 7-bit addresses."""

    def __init__(self, bus: int, devices: dict[int, PCA9685Model]) -> None:
        self.bus = bus
        self.devices = devices
        self.closed = False
        self.transactions: list[str] = []  # per i2c_rdwr call, e.g. "wr" = write, restart, read

    def i2c_rdwr(self, *msgs: i2c_msg) -> None:
        if self.closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        self.transactions.append("".join("r" if m.flags & I2C_M_RD else "w" for m in msgs))
        for msg in msgs:
            dev = self.devices.get(msg.addr)
            if dev is None:
                raise OSError(errno.EREMOTEIO, "Remote I/O error")
            if msg.flags & I2C_M_RD:
                data = dev.read(msg.len)
                ctypes.memmove(msg.buf, data, msg.len)
            else:
                dev.write(bytes(msg))

    def close(self) -> None:
        self.closed = True


class FakeBuses:
    """Stands in for the `smbus2.SMBus` class: `FakeBuses({1: {0x40: model}})(1)`."""

    def __init__(self, buses: dict[int, dict[int, PCA9685Model]],
                 denied: frozenset[int] = frozenset()) -> None:
        self.buses = buses
        self.denied = denied
        self.opened: list[FakeSMBus] = []

    def __call__(self, bus: int) -> FakeSMBus:
        path = f"/dev/i2c-{bus}"
        if bus in self.denied:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        if bus not in self.buses:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        handle = FakeSMBus(bus, self.buses[bus])
        self.opened.append(handle)
        return handle
