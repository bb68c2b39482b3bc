"""The daemon: composes robot, control loop, policy, recorder, control socket and API.

Start-up order matters for safety: the robot connects (actuators neutral) before anything can
command it; the loop runs before READY=1; the API comes last. Shutdown runs in reverse and every
path, including a crash, ends with the actuators neutral.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from brain import __version__
from brain.config import Config
from brain.control.loop import ControlLoop
from brain.control.model import SEED_MODEL_DIR, ModelError
from brain.control.modes import ModeMachine
from brain.control.policy import Policy, PolicyRunner, load_policy
from brain.control.rt import renice_threads
from brain.control_socket import ControlServer
from brain.hardware.factory import make_robot
from brain.hardware.robot import NEUTRAL, Action, Observation, Robot, RobotError
from brain.identity import describe
from brain.notify import Notifier
from brain.recording import EpisodeControl

log = logging.getLogger("brain.daemon")


class ActuatorGuard(Robot):
    """Wraps the robot to remember the last command written, so shutdown can prove (and log)
    that the actuators were left neutral, and so close() always neutralises first."""

    def __init__(self, inner: Robot) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.frames = inner.frames
        self.last_written: Action = NEUTRAL
        self._lock = threading.Lock()

    def connect(self) -> None:
        self.inner.connect()
        self.last_written = NEUTRAL

    def read(self) -> Observation:
        return self.inner.read()

    def write(self, action: Action) -> None:
        self.inner.write(action)
        self.last_written = action

    def neutral(self) -> None:
        with self._lock:
            self.inner.neutral()
            self.last_written = NEUTRAL

    def close(self) -> None:
        with self._lock:
            try:
                self.inner.neutral()
                self.last_written = NEUTRAL
            finally:
                self.inner.close()

    def latest_frame(self):  # type: ignore[no-untyped-def]
        return self.inner.latest_frame()

    def __getattr__(self, name: str) -> Any:  # simulator extras (teacher_action, sim_params)
        return getattr(self.inner, name)


def resolve_model_dir(cfg: Config) -> Path:
    if cfg.policy.model_dir:
        return Path(cfg.policy.model_dir)
    return SEED_MODEL_DIR


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.started = time.monotonic()
        self.stop_event = threading.Event()
        self.stop_reason = ""
        self.robot: ActuatorGuard | None = None
        self.loop: ControlLoop | None = None
        self.policy: Policy | None = None
        self.runner: PolicyRunner | None = None
        self.episodes: EpisodeControl | None = None
        self.identity = describe(cfg.state_path, cfg.robot_name, cfg.profile)
        self.api: Any = None  # brain.api.server.ApiServer when the API is enabled
        self.modes = ModeMachine(cfg.safety.deadman_ms / 1000.0)
        self.control = ControlServer(cfg.socket_path)
        self.notifier = Notifier()
        self.test_hooks = os.environ.get("BRAIN_TEST_HOOKS") == "1"

    # -- status ---------------------------------------------------------------------------------
    def model_id(self) -> str:
        return self.policy.id if self.policy is not None else "none"

    def status(self, histogram: bool = False) -> dict[str, Any]:
        loop = self.loop
        out: dict[str, Any] = {
            "mode": self.modes.mode.value,
            "mode_family": self.modes.mode.family,
            "estop_reason": self.modes.estop_reason or None,
            "profile": self.cfg.profile,
            "robot_name": self.cfg.robot_name,
            "model": self.model_id(),
            "robot_id": self.identity["id"],
            "uptime_s": round(time.monotonic() - self.started, 3),
            "version": __version__,
            "pid": os.getpid(),
        }
        if loop is not None:
            out.update(loop.status())
            if histogram:
                out["histogram"] = {"lateness_us": loop.stats.lateness.nonzero_bins(),
                                    "duration_us": loop.stats.duration.nonzero_bins()}
        if self.episodes is not None:
            out["recorder"] = self.episodes.status()
        if self.runner is not None:
            o = self.runner.output
            out["policy"] = {"inferences": self.runner.inferences, "errors": self.runner.errors,
                             "last_infer_ms": round(o.infer_s * 1e3, 3) if o else None}
        return out

    def status_line(self) -> str:
        loop = self.loop
        if loop is None:
            return "starting"
        st = loop.status()
        return (f"mode={self.modes.mode.value} rate={st['rate_hz']:.2f}Hz "
                f"p99={st['lateness_ms']['p99']:.2f}ms overruns={st['overruns']} "
                f"model={self.model_id()}")

    # -- control socket commands ---------------------------------------------------------------
    def _register_commands(self) -> None:
        c = self.control
        c.register("status", lambda a: self.status(histogram=bool(a.get("histogram"))))
        c.register("mode", self._cmd_mode)
        c.register("stats.reset", self._cmd_stats_reset)
        c.register("drive", self._cmd_drive)
        if self.episodes is not None:
            ep = self.episodes
            c.register("episodes.start", lambda a: {"episode_id": ep.start(
                str(a.get("operator", "")), str(a.get("language_instruction", "")))})
            c.register("episodes.stop", lambda a: ep.stop(str(a.get("reason", "stopped"))))
            c.register("episodes.status", lambda a: ep.status())
        if self.test_hooks:
            c.register("debug.stall", self._cmd_stall)

    def _cmd_mode(self, args: dict[str, Any]) -> dict[str, Any]:
        mode = self.modes.request(str(args.get("mode", "")), reason=str(args.get("reason", "cli")))
        log.info("mode -> %s (requested over the control socket)", mode.value)
        return {"mode": mode.value}

    def _cmd_drive(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            steering = float(args["steering"])
            throttle = float(args["throttle"])
        except (KeyError, TypeError, ValueError):
            raise ValueError("drive needs numeric steering and throttle") from None
        if not (-1.0 <= steering <= 1.0 and -1.0 <= throttle <= 1.0):
            raise ValueError("steering and throttle must lie in -1..1")
        if not self.modes.teleop(steering, throttle, "cli", time.monotonic()):
            raise ValueError(f"not in manual mode (mode is {self.modes.mode.value}); "
                             "run `brain mode manual` first")
        return {"accepted": True, "deadman_ms": self.cfg.safety.deadman_ms}

    def _cmd_stats_reset(self, _args: dict[str, Any]) -> dict[str, Any]:
        """Start the lateness/duration histograms and overrun counts afresh (benchmarks)."""
        assert self.loop is not None
        self.loop.reset_stats()
        return {"reset": True}

    def _cmd_stall(self, args: dict[str, Any]) -> dict[str, Any]:
        seconds = float(args.get("seconds", 0))
        if not 0 < seconds <= 600:
            raise ValueError("seconds must lie in (0, 600]")
        assert self.loop is not None
        self.loop.stall(seconds)
        return {"stalling_s": seconds}

    # -- lifecycle ------------------------------------------------------------------------------
    def _load_policy(self) -> None:
        model_dir = resolve_model_dir(self.cfg)
        try:
            self.policy = load_policy(str(model_dir), self.cfg.policy.backend,
                                      self.cfg.policy.threads)
        except ModelError as e:
            log.error("no policy loaded: %s (autonomous mode unavailable)", e)
            return
        self.modes.policy_available = True
        log.info("policy %s loaded from %s (%s)", self.policy.id, model_dir,
                 self.cfg.policy.backend)

    def _start_recorder(self) -> None:
        assert self.robot is not None and self.loop is not None
        self.episodes = EpisodeControl.from_config(self.cfg, self.robot, self.identity)
        self.episodes.model_id = self.model_id()
        self.loop.sinks.append(self.episodes.sink)

    def _start_api(self) -> bool:
        # Imported here: a daemon with the API disabled never loads the HTTP stack.
        from brain.api.server import ApiServer
        from brain.daemon_service import DaemonService

        try:
            self.api = ApiServer(DaemonService(self), self.cfg)
            for name, handler in self.api.control_handlers().items():
                self.control.register(name, handler)
            self.api.start()
        except (RuntimeError, OSError) as e:
            log.error("%s", e)
            return False
        return True

    def _handle_signal(self, signum: int, _frame: Any) -> None:
        self.stop_reason = signal.Signals(signum).name
        self.stop_event.set()

    def run(self) -> int:
        cfg = self.cfg
        sys.setswitchinterval(cfg.control.switch_interval_ms / 1000.0)
        note = renice_threads(cfg.control.nice)  # before any thread starts: they inherit it
        if note:
            log.warning("%s", note)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle_signal)
        cfg.state_path.mkdir(parents=True, exist_ok=True)
        self.robot = ActuatorGuard(make_robot(cfg))
        try:
            self.robot.connect()
        except RobotError as e:
            log.error("cannot start the %s robot: %s", cfg.profile, e)
            self._close_robot()
            return 1
        try:
            return self._run_connected()
        finally:
            self._shutdown()

    def _run_connected(self) -> int:
        cfg = self.cfg
        assert self.robot is not None
        self._load_policy()
        if self.policy is not None and self.robot.frames is not None:
            self.runner = PolicyRunner(self.policy, self.robot.frames,
                                       max_age_s=cfg.safety.deadman_ms / 1000.0)
        self.loop = ControlLoop.from_config(self.robot, self.modes, cfg, policy=self.runner)
        self._start_recorder()
        self._register_commands()
        self.control.start()
        if self.runner is not None:
            self.runner.start()
            self.runner.enabled.set()
        self.loop.start()
        if not self.loop.wait_first_tick(timeout=3.0):
            log.error("control loop did not start: %r", self.loop.fatal)
            return 1

        if cfg.headless:
            if self.policy is None:
                log.error("headless boot without a policy: staying IDLE")
            else:
                self.modes.request("arm")
                log.info("headless boot: AUTONOMOUS/ARMED with %s, outputs neutral until 'drive'",
                         self.policy.id)
        gc.collect()
        gc.freeze()  # start-up objects never need scanning again: shorter GC pauses later
        self.notifier.send("READY=1")
        self.notifier.send("STATUS=" + self.status_line())
        self.notifier.start_watchdog(lambda: self.loop is not None and self.loop.on_time(),
                                     self.status_line)
        # The API comes after READY=1: the robot is controllable (socket, loop, watchdog) at
        # once, and mDNS announcement takes a couple of seconds.
        if cfg.api.enabled and not self._start_api():
            return 1
        log.info("brain %s up: profile %s, %g Hz, control socket %s", __version__, cfg.profile,
                 cfg.drive_hz, cfg.socket_path)
        while not self.stop_event.wait(0.5):
            if self.loop.fatal is not None:
                log.critical("control loop died; shutting down")
                return 1
        log.info("stopping (%s)", self.stop_reason or "requested")
        return 0

    def _close_robot(self) -> None:
        if self.robot is None:
            return
        try:
            self.robot.close()
        except Exception as e:
            log.error("closing the robot failed: %s", e)

    def _shutdown(self) -> None:
        self.notifier.send("STOPPING=1")
        self.notifier.stop()
        if self.api is not None:
            try:
                self.api.stop()  # first: no new commands while the rest shuts down
            except Exception as e:
                log.error("stopping the API failed: %s", e)
        self.control.stop()
        if self.episodes is not None:
            try:
                self.episodes.close()  # finalise an open episode while the loop still runs
            except Exception as e:
                log.error("closing the recorder failed: %s", e)
        if self.loop is not None:
            self.loop.stop()
        if self.runner is not None:
            self.runner.stop()
        self._close_robot()
        if self.robot is not None:
            a = self.robot.last_written
            log.info("stopped: actuators neutral (steering=%.3f throttle=%.3f)",
                     a.steering, a.throttle)
