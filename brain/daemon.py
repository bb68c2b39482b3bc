"""The daemon: the rig (robot, loop, policy, recorder), the service object that owns every
command, and the transports that carry them (control socket, HTTP API).

Start-up order matters for safety: the robot connects (actuators neutral) before anything can
command it; the loop runs before READY=1; the API comes last. Shutdown runs in reverse and every
path, including a crash, ends with the actuators neutral.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from brain import __version__
from brain.commands import LOCAL
from brain.config import Config, ConfigError
from brain.control.rt import renice_threads
from brain.control_socket import ControlServer
from brain.hardware.robot import RobotError
from brain.notify import Notifier
from brain.ota.manager import OtaManager, kill_point_from_env
from brain.ota.slots import StateFileError
from brain.paths import StateDirError
from brain.rig import Rig
from brain.service import RobotService, clean_exports

log = logging.getLogger("brain.daemon")


class Daemon:
    def __init__(self, cfg: Config, *, test_hooks: bool = False) -> None:
        self.cfg = cfg
        self.test_hooks = test_hooks
        self.stop_event = threading.Event()
        self.stop_reason = ""
        self.rig: Rig | None = None
        self.service: RobotService | None = None
        self.control: ControlServer | None = None
        self.api: Any = None  # brain.api.server.ApiServer when the API is enabled
        self.notifier = Notifier()
        self.trainer: subprocess.Popen[bytes] | None = None
        self.channel: Any = None  # brain.ota.channel.ChannelFollower with ota.channel_url

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
        os.umask(0o027)  # nothing the daemon creates is writable by others, whatever it inherited
        try:
            cfg.layout.prepare()
        except StateDirError as e:
            log.error("state_dir: %s", e)
            return 2
        removed = clean_exports(cfg.layout.exports)
        if removed:
            log.warning("removed what killed exports left behind: %s", ", ".join(removed))
        try:
            self.rig = Rig.build(cfg, with_policy=False)  # the OTA manager loads the model
        except ConfigError as e:
            log.error("configuration error: %s", e)
            return 2
        except RobotError as e:
            log.error("cannot start the %s robot: %s", cfg.profile, e)
            return 1
        except OSError as e:  # the state dir on a full or read-only disk, first start included
            where = f"{e.filename}: " if e.filename else ""
            log.error("cannot start: %s%s", where, e.strerror or e)
            return 2
        try:
            return self._run_connected(self.rig)
        finally:
            self._shutdown()

    def _pairing(self) -> Any:
        if not self.cfg.api.enabled:
            return None
        from brain.api.pairing import Pairing  # no HTTP stack: a file and some hashing

        return Pairing(self.cfg.layout.api, self.cfg.api.pairing_code_ttl_s)

    def _run_connected(self, rig: Rig) -> int:
        cfg = self.cfg
        ota = OtaManager(cfg, rig.model, rig.loop, rig.runner, rig.identity["id"],
                         kill_at=kill_point_from_env(os.environ, self.test_hooks))
        try:
            ota.start()
        except (StateFileError, OSError) as e:
            log.error("model slots: %s", e)
            return 2
        if cfg.ota.channel_url:
            from brain.ota.channel import ChannelFollower

            self.channel = ChannelFollower(cfg.ota.channel_url, ota, rig.identity["id"],
                                           cfg.layout.model / "channel.json",
                                           poll_s=cfg.ota.channel_poll_s,
                                           jitter_s=cfg.ota.channel_jitter_s,
                                           channel=cfg.ota.channel)
        service = self.service = RobotService(cfg, rig, self._pairing(), ota=ota,
                                              test_hooks=self.test_hooks)
        self.control = ControlServer(
            cfg.socket_path, lambda name, args: service.commands.call(name, args, LOCAL))
        try:
            self.control.start()
        except RuntimeError as e:  # another daemon on the socket, or the path is unusable
            log.error("%s", e)
            self.control = None
            return 1
        if not rig.start():
            log.error("control loop did not start: %r", rig.loop.fatal)
            return 1
        if cfg.headless:
            if not rig.model.available():
                log.error("headless boot without a policy: staying IDLE")
            else:
                rig.modes.request("arm", reason="headless boot")
                log.info("headless boot: AUTONOMOUS/ARMED with %s, outputs neutral until 'drive'",
                         rig.model.id)
        gc.collect()
        gc.freeze()  # start-up objects never need scanning again: shorter GC pauses later
        self.notifier.send("READY=1")
        self.notifier.send("STATUS=" + service.status_line())
        self.notifier.start_watchdog(rig.loop.on_time, service.status_line)
        # The API comes after READY=1: the robot is controllable (socket, loop, watchdog) at
        # once, and mDNS announcement takes a couple of seconds.
        if cfg.api.enabled and not self._start_api(service):
            return 1
        self._start_trainer()
        if self.channel is not None:
            self.channel.start()
        log.info("brain %s up: profile %s, %g Hz, control socket %s", __version__, cfg.profile,
                 cfg.drive_hz, cfg.socket_path)
        while not self.stop_event.wait(0.5):
            if rig.loop.fatal is not None:
                log.critical("control loop died; shutting down")
                return 1
        log.info("stopping (%s)", self.stop_reason or "requested")
        return 0

    def _start_api(self, service: RobotService) -> bool:
        # Imported here: a daemon with the API disabled never loads the HTTP stack.
        from brain.api.server import ApiServer

        try:
            self.api = ApiServer(service, self.cfg)
            self.api.start()
        except (RuntimeError, OSError) as e:
            log.error("%s", e)
            return False
        return True

    def _start_trainer(self) -> None:
        """Continuous learning outside systemd (`make run`): the trainer worker as a child
        process at nice 19 that dies with the daemon. Under systemd, brain-trainer.service
        runs it instead (the daemon then starts nothing)."""
        if not self.cfg.train.enable_background or os.environ.get("NOTIFY_SOCKET"):
            return
        from brain.train.worker import PARENT_ENV

        cmd = [sys.executable, "-m", "brain"]
        if self.cfg.source not in ("built-in defaults", ""):
            cmd += ["--config", self.cfg.source]
        env = {**os.environ, PARENT_ENV: str(os.getpid())}
        self.trainer = subprocess.Popen([*cmd, "trainer", "serve"], env=env, close_fds=True)
        log.info("background trainer worker started (pid %d)", self.trainer.pid)

    def _stop_trainer(self) -> None:
        proc, self.trainer = self.trainer, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # it checkpoints its job and requeues it
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _shutdown(self) -> None:
        self.notifier.send("STOPPING=1")
        self.notifier.stop()
        if self.channel is not None:
            self.channel.stop()
        self._stop_trainer()
        if self.api is not None:
            try:
                self.api.stop()  # first: no new commands while the rest shuts down
            except Exception as e:
                log.error("stopping the API failed: %s", e)
        if self.control is not None:
            self.control.stop()
        if self.rig is not None:
            self.rig.stop()
            a = self.rig.robot.last_written
            log.info("stopped: actuators neutral (steering=%.3f throttle=%.3f)",
                     a.steering, a.throttle)
