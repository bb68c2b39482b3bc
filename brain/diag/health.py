"""`brain health`: one command that says what is wrong with a robot.

Every check returns ok / warn / fail with a one-line reason and never raises: a person in the
field wants all the answers at once, not the first traceback. Hardware probes come from
`brain.hardware.probe` (imported lazily, so the simulator needs no smbus2).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from brain.config import Config

OK, WARN, FAIL = "ok", "warn", "fail"

THERMAL_ROOT = Path("/sys/class/thermal")
TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")
# CPU temperature: the Pi 5 firmware starts throttling at 85 °C.
TEMP_WARN_C, TEMP_FAIL_C = 75.0, 85.0


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str


def report(checks: list[Check]) -> dict[str, Any]:
    """The `--json` document: {"ok": no check failed, "checks": [...]}."""
    return {"ok": all(c.status != FAIL for c in checks), "checks": [asdict(c) for c in checks]}


# -- system ---------------------------------------------------------------------------------------

def check_cpu_temperature(thermal_root: Path = THERMAL_ROOT) -> Check:
    readings: list[tuple[str, float]] = []
    for zone in sorted(thermal_root.glob("thermal_zone*")):
        try:
            milli = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue
        kind = (zone / "type").read_text().strip() if (zone / "type").exists() else zone.name
        readings.append((kind, milli / 1000.0))
    if not readings:
        return Check("cpu_temperature", WARN, f"no readable thermal zone under {thermal_root}")
    kind, hottest = max(readings, key=lambda r: r[1])
    detail = f"{hottest:.1f} °C ({kind})"
    if hottest >= TEMP_FAIL_C:
        return Check("cpu_temperature", FAIL, f"{detail}: at the throttling limit "
                     f"({TEMP_FAIL_C:g} °C); check the fan and airflow")
    if hottest >= TEMP_WARN_C:
        return Check("cpu_temperature", WARN, f"{detail}: close to throttling "
                     f"({TEMP_FAIL_C:g} °C)")
    return Check("cpu_temperature", OK, detail)


# vcgencmd get_throttled bits (Raspberry Pi firmware documentation).
_NOW_BITS = {0: "under-voltage", 1: "ARM frequency capped", 2: "throttled",
             3: "soft temperature limit"}
_PAST_BITS = {16: "under-voltage", 17: "ARM frequency capped", 18: "throttled",
              19: "soft temperature limit"}

Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)


def check_throttling(run: Runner = _run, which: Callable[[str], str | None] = shutil.which
                     ) -> Check:
    if which("vcgencmd") is None:
        return Check("throttling", OK, "vcgencmd not present (not a Raspberry Pi); not checked")
    try:
        res = run(["vcgencmd", "get_throttled"])
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check("throttling", WARN, f"vcgencmd get_throttled failed: {e}")
    out = res.stdout.strip()
    if res.returncode != 0 or "=" not in out:
        why = (res.stderr or out).strip() or f"exit {res.returncode}"
        return Check("throttling", WARN, f"vcgencmd get_throttled: {why} "
                     "(is this user in the video group?)")
    try:
        bits = int(out.split("=", 1)[1], 16)
    except ValueError:
        return Check("throttling", WARN, f"vcgencmd get_throttled: unreadable answer {out!r}")
    now = [name for bit, name in _NOW_BITS.items() if bits >> bit & 1]
    past = [name for bit, name in _PAST_BITS.items() if bits >> bit & 1]
    if bits & 1:
        return Check("throttling", FAIL, f"{out}: under-voltage now; the supply cannot hold "
                     "5 V (use the 27 W supply, separate servo/ESC power)")
    if now:
        return Check("throttling", WARN, f"{out}: now {', '.join(now)}")
    if past:
        return Check("throttling", WARN, f"{out}: since boot {', '.join(past)}")
    return Check("throttling", OK, f"{out}: never throttled since boot")


def check_memory() -> Check:
    import psutil

    vm = psutil.virtual_memory()
    avail_mb = vm.available / 2**20
    detail = f"{avail_mb:.0f} MiB available of {vm.total / 2**20:.0f} MiB"
    if avail_mb < 200:
        return Check("memory", FAIL, detail)
    if vm.available < 0.15 * vm.total:
        return Check("memory", WARN, detail)
    return Check("memory", OK, detail)


def check_disk(cfg: Config) -> Check:
    path = cfg.state_path.resolve()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the state dir may not exist before the first run
    usage = shutil.disk_usage(probe)
    free_mb = usage.free / 2**20
    need = cfg.recorder.min_free_mb
    detail = f"{free_mb:.0f} MiB free in {path} (recording needs {need} MiB)"
    if free_mb < need:
        return Check("disk", FAIL, detail + ": recording will refuse to start")
    if free_mb < 4 * need:
        return Check("disk", WARN, detail)
    return Check("disk", OK, detail)


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>; only `status` and `maxerror` are read. The trailing
    # padding is part of the kernel ABI and must be there.
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long),
                ("status", ctypes.c_int), ("constant", ctypes.c_long),
                ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long),
                ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
                ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long),
                ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long),
                ("tai", ctypes.c_int), ("_pad", ctypes.c_int * 11)]


TIME_ERROR, STA_UNSYNC = 5, 0x0040


def kernel_clock_synced() -> tuple[bool, str]:
    """Ask the kernel (adjtimex with modes=0 only reads) whether NTP discipline holds.
    Through ctypes: the standard library has no adjtimex, and no library is needed for one call."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    tx = _Timex()
    state = libc.adjtimex(ctypes.byref(tx))
    if state < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    synced = state != TIME_ERROR and not tx.status & STA_UNSYNC
    return synced, f"kernel clock state {state}, max error {tx.maxerror / 1000:.0f} ms"


def check_clock(flag: Path = TIMESYNC_FLAG,
                kernel: Callable[[], tuple[bool, str]] = kernel_clock_synced) -> Check:
    if flag.exists():
        return Check("clock_sync", OK, "systemd-timesyncd reports the clock synchronised")
    try:
        synced, detail = kernel()
    except OSError as e:
        return Check("clock_sync", WARN, f"cannot read the kernel clock state: {e}")
    if synced:
        return Check("clock_sync", OK, detail)
    return Check("clock_sync", WARN, f"clock not synchronised ({detail}): episode and log "
                 "timestamps may be wrong; check network time (timedatectl)")


# -- hardware -------------------------------------------------------------------------------------

def _simulated(name: str) -> Check:
    return Check(name, OK, "simulated (profile sim)")


def check_i2c(cfg: Config) -> Check:
    if cfg.profile == "sim":
        return _simulated("i2c_bus")
    from brain.hardware.probe import probe_i2c_bus

    ok, detail = probe_i2c_bus(cfg.profiles.pi5_donkey.i2c_bus)
    return Check("i2c_bus", OK if ok else FAIL, detail)


def check_pca9685(cfg: Config) -> Check:
    if cfg.profile == "sim":
        return _simulated("pca9685")
    from brain.hardware.probe import probe_pca9685

    d = cfg.profiles.pi5_donkey
    ok, detail = probe_pca9685(d.i2c_bus, d.pca9685_address)
    return Check("pca9685", OK if ok else FAIL, detail)


def check_camera(cfg: Config) -> Check:
    if cfg.profile == "sim":
        return _simulated("camera")
    if cfg.profiles.pi5_donkey.camera == "none":
        return Check("camera", OK, "no camera configured (profiles.pi5-donkey.camera = none)")
    from brain.hardware.probe import list_cameras

    cams = list_cameras()
    errors = [c for c in cams if c.startswith("error")]
    if errors:
        return Check("camera", FAIL, errors[0])
    if not cams:
        return Check("camera", FAIL, "no camera enumerated (libcamera sees none and no "
                     "/dev/video* exists): check the ribbon cable and camera_auto_detect=1")
    return Check("camera", OK, "; ".join(cams))


def check_serial(cfg: Config) -> Check:
    if cfg.profile == "sim":
        return _simulated("serial")
    from brain.hardware.probe import list_serial_ports

    ports = list_serial_ports()
    found = ", ".join(ports) or "none"
    want = cfg.profiles.pi5_donkey.serial_port
    if not want:
        return Check("serial", OK, f"no serial peripheral configured; ports present: {found}")
    if want in ports or Path(want).exists():
        return Check("serial", OK, f"{want} present")
    return Check("serial", FAIL, f"{want} (profiles.pi5-donkey.serial_port) not present; "
                 f"ports present: {found}")


# -- the daemon ---------------------------------------------------------------------------------

def check_daemon(cfg: Config, status: Callable[[], dict[str, Any]],
                 sample_s: float = 0.0) -> Check:
    """Whether the daemon answers and its loop is on time. `status` asks for the daemon's
    status (over the control socket from the CLI, directly inside the daemon). With
    `sample_s` > 0 the rate is measured over that window instead of over the whole uptime."""
    from brain.control_socket import ControlError, DaemonNotRunning

    try:
        st = status()
        if sample_s > 0:
            t0, ticks0 = time.monotonic(), st.get("ticks", 0)
            time.sleep(sample_s)
            st = status()
            rate = (st.get("ticks", 0) - ticks0) / (time.monotonic() - t0)
        else:
            rate = float(st.get("rate_hz", 0.0))
    except DaemonNotRunning as e:
        # On a robot the daemon should always run; on a development machine it often does not.
        return Check("daemon", FAIL if cfg.profile != "sim" else WARN, str(e))
    except ControlError as e:
        return Check("daemon", FAIL, str(e))
    target = float(st.get("target_hz") or cfg.drive_hz)
    lat = st.get("lateness_ms", {})
    p99 = float(lat.get("p99", 0.0))
    overruns = int(st.get("overruns", 0))
    detail = (f"mode {st.get('mode')}, {rate:.2f}/{target:g} Hz, lateness p99 {p99:.2f} ms, "
              f"{overruns} overruns, model {st.get('model')}, up {st.get('uptime_s', 0):.0f} s")
    period_ms = 1000.0 / target
    if st.get("ticks", 0) == 0 or rate < 0.95 * target:
        return Check("daemon", FAIL, f"control loop not on time: {detail}")
    if p99 > 0.5 * period_ms or overruns:
        return Check("daemon", WARN, f"control loop late at times: {detail}")
    if str(st.get("mode", "")).lower() == "estop":
        return Check("daemon", WARN, f"e-stop latched: {detail}")
    return Check("daemon", OK, detail)


def _guarded(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except Exception as e:  # a broken check is a finding, never a traceback
        return Check(name, FAIL, f"check failed to run: {type(e).__name__}: {e}")


def run_checks(cfg: Config, status: Callable[[], dict[str, Any]],
               quick: bool = True) -> list[Check]:
    """All checks in a fixed order. `quick` judges the loop by the daemon's own counters; the
    full run samples its tick rate for a second."""
    return [
        _guarded("cpu_temperature", check_cpu_temperature),
        _guarded("throttling", check_throttling),
        _guarded("memory", check_memory),
        _guarded("disk", lambda: check_disk(cfg)),
        _guarded("clock_sync", check_clock),
        _guarded("i2c_bus", lambda: check_i2c(cfg)),
        _guarded("pca9685", lambda: check_pca9685(cfg)),
        _guarded("camera", lambda: check_camera(cfg)),
        _guarded("serial", lambda: check_serial(cfg)),
        _guarded("daemon", lambda: check_daemon(cfg, status, 0.0 if quick else 1.0)),
    ]


def format_text(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{c.status.upper():4}  {c.name:<{width}}  {c.detail}" for c in checks]
    failed = sum(c.status == FAIL for c in checks)
    warned = sum(c.status == WARN for c in checks)
    lines.append(f"{'FAIL' if failed else 'OK'}: {failed} failed, {warned} warnings")
    return "\n".join(lines)
