"""Configuration: a typed schema, TOML loading, environment overrides and validation.

Sources, later wins: built-in defaults < TOML file (`--config`, else `$BRAIN_CONFIG`, else
`/etc/brain/brain.toml` when present) < `BRAIN_*` variables < the field plan's `CONTINUON_*`
variables. Every problem raises `ConfigError` naming the key and where it came from; the CLI
turns that into one line on stderr and exit code 2.

The schema is plain dataclasses; each field's metadata carries its documentation and bounds, so
`etc/brain.toml` and the validator cannot drift apart (a test renders one from the other).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit

from brain.paths import StateLayout

SYSTEM_CONFIG = Path("/etc/brain/brain.toml")
MAX_CONFIG_BYTES = 1 << 20  # a configuration file is a few KiB; /dev/zero is not one
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes, NUL included
PROFILES = ("sim", "pi5-donkey")


class ConfigError(ValueError):
    """Invalid configuration; the message names the key and its source."""


def setting(default: Any, doc: str, *, min: float | None = None, max: float | None = None,
            choices: tuple[Any, ...] | None = None, pattern: str | None = None) -> Any:
    meta = {"doc": doc, "min": min, "max": max, "choices": choices, "pattern": pattern}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, doc: str) -> Any:
    return field(default_factory=cls, metadata={"doc": doc})


HEX_COLOUR = r"^(#[0-9a-fA-F]{6})?$"


@dataclass
class SimProfile:
    drive_hz: int = setting(50, "Control loop rate in Hz.", min=20, max=50)
    track: str = setting("oval", "Track layout.",
                         choices=("oval", "rounded-square", "chicane", "hairpin", "figure-s"))
    track_file: str = setting("", "A track layout file (TOML or JSON: segments, width, theme;"
                              " see etc/tracks/README.md); when set it replaces `track`.")
    road_width_m: float = setting(0.0, "Road width in metres; 0 = the track's own width.",
                                  min=0.0, max=3.0)
    road_colour: str = setting("", "Road colour #rrggbb; empty = the track's theme.",
                               pattern=HEX_COLOUR)
    line_colour: str = setting("", "Edge line colour #rrggbb; empty = the track's theme.",
                               pattern=HEX_COLOUR)
    ground_colour: str = setting("", "Off-road ground colour #rrggbb; empty = the theme.",
                                 pattern=HEX_COLOUR)
    lighting: float = setting(1.0, "Scene brightness multiplier.", min=0.2, max=2.0)
    max_speed_mps: float = setting(2.0, "Car speed at full throttle, m/s.", min=0.2, max=10.0)
    seed: int = setting(0, "Random seed for start pose noise and sensor noise.", min=0)


@dataclass
class DonkeyProfile:
    drive_hz: int = setting(50, "Control loop rate in Hz.", min=20, max=50)
    i2c_bus: int = setting(1, "I2C bus number of the PCA9685 (/dev/i2c-N).", min=0, max=255)
    pca9685_address: int = setting(0x40, "7-bit I2C address of the PCA9685.", min=0x03, max=0x77)
    pwm_frequency_hz: int = setting(50, "PWM frequency for the servo and ESC.", min=40, max=400)
    steering_channel: int = setting(0, "PCA9685 channel of the steering servo.", min=0, max=15)
    throttle_channel: int = setting(1, "PCA9685 channel of the ESC.", min=0, max=15)
    steering_left_us: int = setting(2000, "Servo pulse (µs) for full left.", min=500, max=2500)
    steering_center_us: int = setting(1500, "Servo pulse (µs) for straight ahead.",
                                      min=500, max=2500)
    steering_right_us: int = setting(1000, "Servo pulse (µs) for full right.", min=500, max=2500)
    throttle_reverse_us: int = setting(1000, "ESC pulse (µs) for full reverse.", min=500, max=2500)
    throttle_neutral_us: int = setting(1500, "ESC pulse (µs) for stop.", min=500, max=2500)
    throttle_forward_us: int = setting(2000, "ESC pulse (µs) for full forward.", min=500, max=2500)
    camera: str = setting("picamera2", "Camera driver.", choices=("picamera2", "none"))
    serial_port: str = setting("", "Serial peripheral device (e.g. /dev/ttyAMA0); empty = none.")
    serial_baud: int = setting(115200, "Serial peripheral baud rate.", min=1200, max=4000000)


@dataclass
class Profiles:
    sim: SimProfile = section(SimProfile, "The simulated car (default).")
    pi5_donkey: DonkeyProfile = section(DonkeyProfile,
                                        "Raspberry Pi 5 donkey car: servo + ESC on a PCA9685.")


@dataclass
class CameraConfig:
    width: int = setting(640, "Capture width in pixels.", min=64, max=4096)
    height: int = setting(480, "Capture height in pixels.", min=48, max=3072)
    fps: int = setting(30, "Capture rate in frames per second.", min=1, max=120)
    jpeg_quality: int = setting(75, "JPEG quality for recorded and streamed frames.",
                                min=10, max=100)


@dataclass
class SafetyConfig:
    max_steering: float = setting(1.0, "Largest |steering| ever sent (0..1).", min=0.0, max=1.0)
    max_throttle: float = setting(0.6, "Largest forward throttle ever sent (0..1).",
                                  min=0.0, max=1.0)
    max_reverse: float = setting(0.3, "Largest reverse throttle ever sent (0..1).",
                                 min=0.0, max=1.0)
    deadman_ms: int = setting(250, "A teleop command lapses this long after it arrived, on "
                              "every transport (ms); the robot is neutral by then.",
                              min=50, max=2000)
    remote_reset_of_local_estop: bool = setting(False, "Let a paired API client reset an "
                                                "e-stop latched on the robot (CLI) or by a "
                                                "fault. Off: only `brain mode reset` can.")


@dataclass
class ControlConfig:
    realtime: bool = setting(True, "Run the control thread SCHED_FIFO when permitted.")
    rt_priority: int = setting(50, "SCHED_FIFO priority of the control thread.", min=1, max=99)
    cpu: int = setting(-1, "Pin the control thread to this CPU; -1 = no pinning.",
                       min=-1, max=1023)
    spin_us: int = setting(1000, "Busy-wait this long before each deadline instead of sleeping "
                           "through it: waking an idle CPU took 0.1-3 ms on the build VMs "
                           "(p99 1 ms -> 0.03 ms); ~200 is plenty on a Pi 5; 0 = never spin.",
                           min=0, max=5000)
    nice: int = setting(-10, "Nice value of the daemon's other threads (applied when "
                        "permitted). They hold the GIL the control thread needs: one preempted "
                        "by an ordinary process while holding it stalls the loop.",
                        min=-20, max=19)
    switch_interval_ms: float = setting(0.1, "Python GIL switch interval (ms); short keeps "
                                        "other threads (API, camera) from delaying the loop: "
                                        "0.5 added 0.8 ms to p99 under API load, 0.1 added none.",
                                        min=0.05, max=5.0)
    camera_phase_lock: bool = setting(True, "Align the loop's ticks with a free-running "
                                      "camera's frames when its frame rate divides the loop "
                                      "rate (e.g. 25 or 50 fps at 50 Hz), so every frame is "
                                      "taken on a tick: the field plan's frame-to-step skew "
                                      "<= 5 ms. At 30 fps and 50 Hz frames fall up to 10 ms "
                                      "from the nearest tick whatever the loop does.")
    lockstep: bool = setting(False, "Simulator only: run on simulated time, as fast as the "
                             "simulator renders, with the camera, the policy and the recorder "
                             "in step with every tick (collection, evaluation, benches); the "
                             "same code path as real time. Refused with any other profile.")
    watchdog_margin_ticks: int = setting(10, "Ticks the loop may fall behind before the "
                                         "systemd watchdog is no longer fed.", min=2, max=1000)


@dataclass
class PolicyConfig:
    model_dir: str = setting("", "Model directory; empty = the active bundle, else the seed.")
    backend: str = setting("onnxruntime", "Inference backend.",
                           choices=("onnxruntime", "litert"))
    threads: int = setting(1, "Inference threads.", min=1, max=8)


@dataclass
class TrainConfig:
    enable_background: bool = setting(False, "Run the background trainer "
                                      "(CONTINUON_ENABLE_BACKGROUND_TRAINER).")
    sysfs_root: str = setting("/sys", "Where the trainer's resource monitor reads thermal "
                              "zones (class/thermal/thermal_zone*/temp); a directory tree of "
                              "your own in tests and containers.")
    procfs_root: str = setting("/proc", "Where the resource monitor reads meminfo.")
    job_config: str = setting("", "Training configuration (JSON, docs/training.md) of the jobs "
                              "the trigger queues; empty = the built-in defaults, which are "
                              "etc/train/pi5-donkey.json's.")
    lease_ttl_s: float = setting(30.0, "A trainer worker's lease on the one training slot "
                                 "lapses this long after its last heartbeat (1 s); another "
                                 "worker then resumes its job from the last checkpoint.",
                                 min=2.0, max=3600.0)
    trigger_episodes: int = setting(16, "Continuous learning: queue a job once this many new "
                                    "valid episodes have arrived.", min=1, max=100000)
    trigger_min_interval_s: float = setting(600.0, "…and at least this long after the last "
                                            "job the trigger queued (s).", min=0.0,
                                            max=604800.0)
    trigger_poll_s: float = setting(10.0, "How often the worker looks for new episodes (s).",
                                    min=0.5, max=3600.0)
    job_memory_mb: int = setting(700, "Peak memory a job needs (bench/train.py measures ~550 "
                                 "MB); a job waits until this plus the headroom is available.",
                                 min=64, max=1_000_000)
    memory_headroom_mb: int = setting(256, "Memory always left to the daemon when a job starts.",
                                      min=0, max=1_000_000)
    local_max_minutes: float = setting(30.0, "A triggered job estimated to take longer here "
                                       "goes to the cloud (exported) instead.", min=0.1,
                                       max=10080.0)
    local_max_data_mb: int = setting(4096, "…as does one with more episode data than this "
                                     "(MB).", min=1, max=10_000_000)


@dataclass
class OtaConfig:
    trusted_keys_dir: str = setting("/etc/brain/keys", "Directory of trusted publisher keys "
                                    "(*.pub, Ed25519 PEM); bundles signed by others are "
                                    "refused. A checkout's etc/keys is never trusted by "
                                    "default.")
    allow_local_promotion: bool = setting(False, "Trust the robot's own key for bundles it "
                                          "trained itself (origin: device).")
    max_bundle_bytes: int = setting(512 << 20, "Largest bundle accepted (bytes), downloads "
                                    "and uploads included.", min=1 << 20, max=16 << 30)
    attempts: int = setting(2, "Trials a bundle gets when it fails for a passing reason "
                            "(the loop late, inference over its budget).", min=1, max=10)
    probation_s: float = setting(10.0, "How long a new model drives under watch before it is "
                                 "committed (s).", min=0.0, max=3600.0)
    channel_url: str = setting("", "A fleet channel to follow: the URL of its channel.json "
                               "(ota/SPEC.md, section 6). Empty: none.",
                               pattern=r"^(https?://[^\s]{1,2000})?$")
    channel: str = setting("", "The name of the channel the robot follows: a document of any "
                           "other channel is refused. Empty: the <name> of a channel_url of "
                           "the form .../channels/<name>/channel.json (brain-cloud serve's).",
                           pattern=r"^([a-z0-9][a-z0-9_-]{0,63})?$")
    channel_poll_s: float = setting(300.0, "Seconds between polls of the channel.", min=1.0,
                                    max=86400.0)
    channel_jitter_s: float = setting(30.0, "Up to this many random seconds added to each poll "
                                      "(spreads a fleet's requests).", min=0.0, max=86400.0)


@dataclass
class ExportConfig:
    origin: str = setting("pi5", "Origin tag stamped on export manifests "
                          "(CONTINUON_EXPORT_ORIGIN).", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    keep_count: int = setting(5, "Export archives kept on the robot (the API's exports); the "
                              "oldest beyond this are deleted after a new one.", min=1,
                              max=1000)
    keep_mb: int = setting(2048, "Total size of export archives kept on the robot (MiB); the "
                           "oldest beyond it are deleted after a new one.", min=1,
                           max=1_000_000)


@dataclass
class RecorderConfig:
    min_free_mb: int = setting(512, "Refuse to start, or stop, an episode below this much free "
                               "disk in the state dir (MiB).", min=16, max=1_000_000)
    fsync_interval_ms: int = setting(500, "Longest time recorded steps stay unsynced (ms).",
                                     min=50, max=1000)
    max_episode_s: int = setting(600, "Stop an episode automatically after this long (s).",
                                 min=1, max=86400)
    operator: str = setting("", "Default operator name stamped on episodes (anonymisable).")


@dataclass
class ApiConfig:
    enabled: bool = setting(True, "Serve the HTTP API and the web teleop page.")
    host: str = setting("127.0.0.1", "Address to bind; 0.0.0.0 on the robot.")
    port: int = setting(8080, "TCP port (8443 on the robot).", min=1, max=65535)
    tls: bool = setting(False, "Force HTTPS even on loopback (always on for other bindings).")
    mdns: bool = setting(True, "Advertise the robot with mDNS/zeroconf.")
    mdns_interfaces: str = setting("", "Comma-separated interface addresses to advertise on; "
                                   "empty = loopback when bound to loopback, else all.")
    pairing_code_ttl_s: int = setting(300, "How long a pairing code stays valid (s).",
                                      min=30, max=3600)
    camera_fps: int = setting(10, "Frame-rate cap of the MJPEG live view.", min=1, max=30)
    header_timeout_s: float = setting(10.0, "A connection must send a complete request head "
                                      "within this long, or it is closed (slow clients).",
                                      min=1.0, max=120.0)
    max_pending_per_address: int = setting(16, "Connections one address may hold while they "
                                           "send their request head; the oldest is closed "
                                           "for a newer one.", min=2, max=1024)
    trusted_proxies: str = setting("", "Comma-separated addresses of reverse proxies whose "
                                   "X-Forwarded-For is believed; empty = none (the client "
                                   "address is the TCP peer).")


@dataclass
class Config:
    profile: str = setting("sim", "Robot profile.", choices=PROFILES)
    robot_name: str = setting("brain", "Human-readable robot name.",
                              pattern=r"^[^\x00-\x1f]{1,63}$")
    state_dir: str = setting("", "Persistent state; empty = $STATE_DIRECTORY under systemd, "
                             "else ./var.")
    runtime_dir: str = setting("", "Control socket directory; empty = $RUNTIME_DIRECTORY "
                               "under systemd, else <state_dir>/run.")
    headless: bool = setting(False, "Boot into AUTONOMOUS/ARMED with the policy loaded "
                             "(CONTINUON_HEADLESS).")
    log_level: str = setting("info", "Log level.", choices=("debug", "info", "warning", "error"))
    control: ControlConfig = section(ControlConfig, "The fixed-rate control loop.")
    safety: SafetyConfig = section(SafetyConfig, "Limits applied to every action.")
    camera: CameraConfig = section(CameraConfig, "Camera capture.")
    policy: PolicyConfig = section(PolicyConfig, "Autonomous policy inference.")
    train: TrainConfig = section(TrainConfig, "On-device training.")
    export: ExportConfig = section(ExportConfig, "Dataset export.")
    ota: OtaConfig = section(OtaConfig, "Signed model bundles over the air (ota/SPEC.md).")
    recorder: RecorderConfig = section(RecorderConfig, "Episode recording.")
    api: ApiConfig = section(ApiConfig, "HTTP API, pairing and LAN discovery.")
    profiles: Profiles = section(Profiles, "Per-profile hardware settings and calibration.")

    # -- derived ---------------------------------------------------------------------------
    source: str = field(default="built-in defaults", compare=False,
                        metadata={"internal": True})

    @property
    def state_path(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir)
        if os.environ.get("STATE_DIRECTORY"):  # set by systemd's StateDirectory=
            return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
        return Path("var")

    @property
    def layout(self) -> StateLayout:
        """Where everything under the state directory lives (brain.paths)."""
        return StateLayout(self.state_path)

    @property
    def runtime_path(self) -> Path:
        if self.runtime_dir:
            return Path(self.runtime_dir)
        if os.environ.get("RUNTIME_DIRECTORY"):
            return Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0])
        return self.state_path / "run"

    @property
    def socket_path(self) -> Path:
        return self.runtime_path / "control.sock"

    @property
    def drive_hz(self) -> int:
        return self.active_profile.drive_hz

    @property
    def active_profile(self) -> SimProfile | DonkeyProfile:
        return self.profiles.sim if self.profile == "sim" else self.profiles.pi5_donkey


# ---------------------------------------------------------------------------------------------
# Loading and validation


def _toml_name(name: str) -> str:
    # Python identifiers use '_', TOML keys for profiles use '-' ("pi5-donkey").
    return "pi5-donkey" if name == "pi5_donkey" else name


def schema_fields(cls: type) -> list[tuple[str, dataclasses.Field, Any]]:
    hints = get_type_hints(cls)
    return [(f.name, f, hints[f.name]) for f in dataclasses.fields(cls)
            if not f.metadata.get("internal")]


def _is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp)


def _check_value(key: str, value: Any, tp: Any, meta: Mapping[str, Any], source: str) -> Any:
    where = f"{key} (in {source})"
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):  # NaN compares false with every bound: refuse it here
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        if CONTROL_CHARS.search(value):
            raise ConfigError(f"{where}: {value!r} contains a control character")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and not lo <= value:
        raise ConfigError(f"{where}: {value!r} is below the minimum {lo}")
    if hi is not None and not value <= hi:
        raise ConfigError(f"{where}: {value!r} is above the maximum {hi}")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
    pattern = meta.get("pattern")
    if pattern and not re.fullmatch(pattern, value):
        raise ConfigError(f"{where}: {value!r} is not a valid value")
    return value


def _apply(obj: Any, data: Mapping[str, Any], prefix: str, source: str) -> None:
    fields = {_toml_name(name): (name, f, tp) for name, f, tp in schema_fields(type(obj))}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{dotted} (in {source}): unknown key; known keys here: {known}")
        name, f, tp = fields[key]
        if _is_section(tp):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{dotted} (in {source}): expected a table [{dotted}]")
            _apply(getattr(obj, name), value, dotted + ".", source)
        else:
            setattr(obj, name, _check_value(dotted, value, tp, f.metadata, source))


def _parse_env(var: str, raw: str, tp: Any) -> Any:
    if tp is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{var}: expected 1/0 or true/false, got {raw!r}")
    if tp is int:
        try:
            return int(raw, 0)
        except ValueError:
            raise ConfigError(f"{var}: expected an integer, got {raw!r}") from None
    if tp is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{var}: expected a number, got {raw!r}") from None
    return raw


def env_settings(cls: type = Config, prefix: str = "") -> dict[str, tuple[str, Any]]:
    """Map every BRAIN_* variable name to (dotted key, type): BRAIN_SAFETY_MAX_THROTTLE ->
    safety.max_throttle, BRAIN_PROFILES_PI5_DONKEY_I2C_BUS -> profiles.pi5-donkey.i2c_bus."""
    out: dict[str, tuple[str, Any]] = {}
    for name, _f, tp in schema_fields(cls):
        dotted = prefix + _toml_name(name)
        if _is_section(tp):
            out.update(env_settings(tp, dotted + "."))
        else:
            var = "BRAIN_" + re.sub(r"[^A-Za-z0-9]", "_", dotted).upper()
            out[var] = (dotted, tp)
    return out


# The field plan's names, honoured as they are.
CONTINUON_VARS = {
    "CONTINUON_HEADLESS": "headless",
    "CONTINUON_ENABLE_BACKGROUND_TRAINER": "train.enable_background",
    "CONTINUON_EXPORT_ORIGIN": "export.origin",
}


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    parts = dotted.split(".")
    out: dict[str, Any] = {parts[-1]: value}
    for p in reversed(parts[:-1]):
        out = {p: out}
    return out


def _types_by_key() -> dict[str, Any]:
    return {dotted: tp for dotted, tp in env_settings().values()}


def load_config(path: str | os.PathLike[str] | None = None,
                env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Build the effective configuration. `overrides` (dotted keys) come from CLI flags."""
    env = os.environ if env is None else env
    cfg = Config()
    if path is None and env.get("BRAIN_CONFIG"):
        path = env["BRAIN_CONFIG"]
    if path is None and SYSTEM_CONFIG.is_file():
        path = SYSTEM_CONFIG
    if path is not None:
        p = Path(path)
        _apply(cfg, read_toml(p), "", str(p))
        cfg.source = str(p)
    known = env_settings()
    for var, raw in sorted(env.items()):
        if var in ("BRAIN_CONFIG",) or not var.startswith("BRAIN_"):
            continue
        if var not in known:
            continue  # other BRAIN_* variables (test hooks, tool settings) are not config keys
        dotted, tp = known[var]
        _apply(cfg, _nest(dotted, _parse_env(var, raw, tp)), "", f"environment {var}")
    types = _types_by_key()
    for var, dotted in CONTINUON_VARS.items():
        if var in env:
            value = _parse_env(var, env[var], types[dotted])
            _apply(cfg, _nest(dotted, value), "", f"environment {var}")
    for dotted, value in (overrides or {}).items():
        _apply(cfg, _nest(dotted, value), "", "command line")
    _cross_checks(cfg)
    return cfg


def builtin_config(overrides: Mapping[str, Any] | None = None) -> Config:
    """The built-in defaults with `overrides` (dotted keys) and nothing else: no file, no
    environment. Closed-loop evaluation runs on this, so its figures do not depend on the
    machine it runs on."""
    cfg = Config()
    cfg.source = "built-in defaults"
    for dotted, value in (overrides or {}).items():
        _apply(cfg, _nest(dotted, value), "", "overrides")
    _cross_checks(cfg)
    return cfg


def read_toml(p: Path) -> dict[str, Any]:
    """A configuration file's table; ConfigError naming the file for anything else."""
    try:
        if not p.exists():
            raise ConfigError(f"{p}: configuration file not found")
        if not p.is_file():
            what = "a directory" if p.is_dir() else "not a regular file"
            raise ConfigError(f"{p}: {what}; --config takes a TOML file")
        with p.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except PermissionError:
        raise ConfigError(f"{p}: permission denied reading the configuration") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the configuration: {e.strerror or e}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: larger than {MAX_CONFIG_BYTES >> 10} KiB; not a configuration")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None


def followed_channel(url: str, configured: str = "") -> str:
    """The channel a robot follows: `ota.channel`, else the <name> in a URL of the form
    .../channels/<name>/channel.json; "" when neither says."""
    if configured:
        return configured
    m = re.search(r"/channels/([a-z0-9][a-z0-9_-]{0,63})/channel\.json$", urlsplit(url).path)
    return m.group(1) if m else ""


def _cross_checks(cfg: Config) -> None:
    if cfg.ota.channel_url:
        if not followed_channel(cfg.ota.channel_url, cfg.ota.channel):
            raise ConfigError(f"ota.channel (in {cfg.source}): the name of the channel that "
                              f"{cfg.ota.channel_url} serves is needed (its URL does not say "
                              "it as .../channels/<name>/channel.json)")
    if cfg.control.lockstep and cfg.profile != "sim":
        raise ConfigError(f"control.lockstep (in {cfg.source}): simulated time exists only on "
                          f"the simulator, not on {cfg.profile}")
    if cfg.profiles.sim.track_file:
        from brain.hardware.sim.tracks import SimParamError, load_track  # numpy: only if used

        sim = cfg.profiles.sim
        try:
            load_track(sim.track, sim.road_width_m, track_file=sim.track_file)
        except SimParamError as e:
            raise ConfigError(f"profiles.sim.{e.key} (in {cfg.source}): {e.message}") from None
    sock = str(cfg.socket_path)
    if len(os.fsencode(sock)) > SOCKET_PATH_MAX:
        raise ConfigError(f"runtime_dir: the control socket path {sock} is "
                          f"{len(os.fsencode(sock))} bytes, over the {SOCKET_PATH_MAX} a unix "
                          "socket allows; choose a shorter runtime_dir")
    d = cfg.profiles.pi5_donkey
    if d.steering_channel == d.throttle_channel:
        raise ConfigError(f"profiles.pi5-donkey.throttle_channel (in {cfg.source}): "
                          f"same channel as steering_channel ({d.steering_channel})")
    if not (d.throttle_reverse_us < d.throttle_neutral_us < d.throttle_forward_us
            or d.throttle_reverse_us > d.throttle_neutral_us > d.throttle_forward_us):
        raise ConfigError(f"profiles.pi5-donkey.throttle_neutral_us (in {cfg.source}): must lie "
                          "between throttle_reverse_us and throttle_forward_us")
    lo, c, hi = d.steering_left_us, d.steering_center_us, d.steering_right_us
    if not (lo < c < hi or lo > c > hi):
        raise ConfigError(f"profiles.pi5-donkey.steering_center_us (in {cfg.source}): must lie "
                          "between steering_left_us and steering_right_us")


def config_as_dict(cfg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, _f, tp in schema_fields(type(cfg)):
        value = getattr(cfg, name)
        out[_toml_name(name)] = config_as_dict(value) if _is_section(tp) else value
    return out


def render_toml(cfg_cls: type = Config) -> str:
    """The documented default configuration (what `etc/brain.toml` holds)."""
    lines = ["# brain configuration. Every key is optional; shown here with its default.",
             "# Environment variables override it: BRAIN_<SECTION>_<KEY> "
             "(e.g. BRAIN_SAFETY_MAX_THROTTLE=0.4),",
             "# and the field plan's CONTINUON_HEADLESS, CONTINUON_ENABLE_BACKGROUND_TRAINER,",
             "# CONTINUON_EXPORT_ORIGIN. Check a file with: brain config check --config FILE", ""]

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return repr(v)

    def emit(cls: type, obj: Any, prefix: str) -> None:
        scalars = [(n, f, t) for n, f, t in schema_fields(cls) if not _is_section(t)]
        for name, f, _tp in scalars:
            m = f.metadata
            extra = []
            if m.get("min") is not None or m.get("max") is not None:
                extra.append(f"range {m.get('min')}..{m.get('max')}")
            if m.get("choices"):
                extra.append("one of " + ", ".join(map(str, m["choices"])))
            tail = f" ({'; '.join(extra)})" if extra else ""
            lines.append(f"# {m['doc']}{tail}")
            lines.append(f"{_toml_name(name)} = {fmt(getattr(obj, name))}")
        for name, f, tp in schema_fields(cls):
            if _is_section(tp):
                table = prefix + _toml_name(name)
                sub = getattr(obj, name)
                if any(not _is_section(t) for _, _, t in schema_fields(tp)):
                    lines.append("")
                    lines.append(f"# {f.metadata['doc']}")
                    lines.append(f"[{table}]")
                emit(tp, sub, table + ".")

    emit(cfg_cls, cfg_cls(), "")
    return "\n".join(lines) + "\n"
