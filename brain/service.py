"""The robot's service object: every command and its semantics, owned once.

Built by the daemon from its parts (the `Rig`, the pairing store, the configuration) whether
or not the HTTP API runs. The control socket and the API only transport these commands (see
`brain.commands`); the API's live streams (teleop WebSocket, MJPEG, telemetry) call the
plain methods at the bottom. Every method answers from snapshots or hands work to another
thread or process; none takes a lock the control loop holds for longer than an attribute
swap, so no client can delay a tick.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import psutil
from pydantic import Field

from brain import __version__
from brain.commands import (
    LOCAL,
    Args,
    Caller,
    CommandTable,
    Forbidden,
    InsufficientStorage,
    Invalid,
    NotFound,
    Refused,
    Rejected,
    Unavailable,
    command,
)
from brain.control.modes import BY_REMOTE, BY_ROBOT, REQUESTS, ForbiddenReset, ModeError
from brain.durable import fsync_dir
from brain.rlds.recorder import RecorderError
from brain.rlds.store import (
    EPISODE_ID_PATTERN,
    EpisodeBusy,
    EpisodeError,
    EpisodeNotFound,
    delete_episode,
    list_episodes,
)
from brain.train.jobs import PRIORITIES, STATUSES

if TYPE_CHECKING:
    from brain.api.pairing import Pairing
    from brain.config import Config
    from brain.ota.manager import OtaManager
    from brain.rig import Rig

log = logging.getLogger(__name__)

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")
EXPORT_NAME = re.compile(r"^rlds-[0-9TZ-]{1,40}\.tar$")
EXPORT_DIR = re.compile(r"^rlds-[0-9TZ-]{1,40}$")  # an export not yet packed


def cpu_temperature() -> float | None:
    try:
        return int(THERMAL_ZONE.read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


# -- command arguments --------------------------------------------------------------------------
# Numbers are strict (no booleans, no numeric strings) and finite; text is bounded and free of
# control characters.

class StatusArgs(Args):
    histogram: bool = Field(default=False, strict=True,
                            description="include the lateness and duration histograms")


class ModeArgs(Args):
    mode: Literal[REQUESTS] = Field(  # type: ignore[valid-type]
        description="idle, manual, arm, drive, estop (latched) or reset")
    reason: str = Field(default="", max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$",
                        description="why (kept with an e-stop)")


class DriveArgs(Args):
    steering: float = Field(strict=True, ge=-1.0, le=1.0, allow_inf_nan=False,
                            description="-1 (full left) .. 1 (full right)")
    throttle: float = Field(strict=True, ge=-1.0, le=1.0, allow_inf_nan=False,
                            description="-1 (full reverse) .. 1 (full forward)")


EpisodeId = Annotated[str, Field(pattern=EPISODE_ID_PATTERN)]


class EpisodeStartArgs(Args):
    operator: str = Field(default="", max_length=64, pattern=r"^[^\x00-\x1f\x7f]*$")
    language_instruction: str = Field(default="", max_length=512,
                                      pattern=r"^[^\x00-\x08\x0b-\x1f\x7f]*$")


class EpisodeArgs(Args):
    id: EpisodeId


class ExportArgs(Args):
    ids: list[EpisodeId] = Field(default_factory=list, max_length=10_000,
                                 description="episodes to export; empty = all")
    anonymize: bool = Field(default=True, strict=True,
                            description="strip operator names and other personal data")


class ExportNameArgs(Args):
    name: str = Field(max_length=64)


class RevokeArgs(Args):
    name: str = Field(min_length=1, max_length=64)


class OtaInstallArgs(Args):
    source: str = Field(min_length=1, max_length=4096,
                        description="an http(s) URL of a bundle, or (over the control socket "
                                    "only) a path on the robot")


JobId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
TrainPriority = Literal[tuple(PRIORITIES)]  # type: ignore[valid-type]
JobStatus = Literal[STATUSES]  # type: ignore[valid-type]


class TrainingStartArgs(Args):
    config: dict[str, Any] = Field(default_factory=dict,
                                   description="training configuration (docs/training.md); "
                                               "empty = the built-in defaults")
    priority: TrainPriority = "normal"  # type: ignore[valid-type]
    episodes: list[EpisodeId] = Field(default_factory=list, max_length=10_000,
                                      description="episodes to train on; empty = all")


class TrainingListArgs(Args):
    status: JobStatus | None = None  # type: ignore[valid-type]
    # Not strict: over HTTP these come in the query string, as text.
    limit: int = Field(default=20, ge=1, le=1000)


class JobArgs(Args):
    id: JobId


class TrainingMetricsArgs(Args):
    id: JobId
    every: int = Field(default=1, ge=1, le=100_000,
                       description="every N-th logged step")


class TrainingLogsArgs(Args):
    id: JobId
    after: int = Field(default=0, ge=0, description="log lines after this seq")


class TeachArgs(Args):
    seconds: float = Field(strict=True, gt=0, le=3600, allow_inf_nan=False,
                           description="how long the teacher drives")


class StallArgs(Args):
    seconds: float = Field(strict=True, gt=0, le=600, allow_inf_nan=False)


class RobotService:
    def __init__(self, cfg: Config, rig: Rig, pairing: Pairing | None = None, *,
                 ota: OtaManager | None = None, test_hooks: bool = False) -> None:
        self.cfg = cfg
        self.rig = rig
        self.pairing = pairing
        self.ota = ota
        self.test_hooks = test_hooks
        self.started = time.monotonic()
        self._callbacks: list[Callable[[], None]] = []
        self._jpeg_lock = threading.Lock()
        self._jpeg: tuple[int, bytes, float] | None = None  # (frame seq, bytes, t_capture)
        self._export_lock = threading.Lock()
        self.commands = CommandTable(self)
        rig.model.on_change(self.changed)
        psutil.cpu_percent(None)  # prime: the next call reports usage since now
        self._teach_until = 0.0  # sim.teach: the teacher drives until then (monotonic)

    # -- change notification (mDNS TXT, STATUS=) ------------------------------------------------
    def on_change(self, callback: Callable[[], None]) -> None:
        """Run `callback` (from any thread) when identity() changes: name or model."""
        self._callbacks.append(callback)

    def changed(self) -> None:
        for cb in list(self._callbacks):
            try:
                cb()
            except Exception:
                log.exception("change callback failed")

    # -- identity and status ----------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        ident = self.rig.identity
        return {"id": ident["id"], "name": ident["name"], "version": ident["version"],
                "model": self.rig.model.id}

    def resources(self) -> dict[str, Any]:
        vm = psutil.virtual_memory()
        return {"cpu": psutil.cpu_percent(None), "mem": vm.percent,
                "mem_available_mb": vm.available >> 20, "temp": cpu_temperature()}

    @command("status", args=StatusArgs, http=("GET", "/status"))
    def status(self, args: StatusArgs | None = None, caller: Caller | None = None) -> dict:
        """Mode, loop rate and lateness, model, recorder, policy and resources."""
        args = args or StatusArgs()
        rig, modes = self.rig, self.rig.modes
        loop = rig.loop
        out: dict[str, Any] = {
            "mode": modes.mode.value, "mode_family": modes.mode.family,
            "estop_reason": modes.estop_reason or None,
            "estop_origin": modes.estop_origin or None,
            "estop_history": [asdict(e) for e in list(modes.estop_history)[-10:]],
            "profile": self.cfg.profile, "robot_name": self.cfg.robot_name,
            "model": rig.model.id, "robot_id": rig.identity["id"],
            "uptime_s": round(time.monotonic() - self.started, 3),
            "version": __version__, "pid": os.getpid(),
        }
        out.update(loop.status())
        if args.histogram:
            out["histogram"] = {"lateness_us": loop.stats.lateness.nonzero_bins(),
                                "duration_us": loop.stats.duration.nonzero_bins()}
        out["recorder"] = rig.episodes.status()
        o = rig.runner.output
        out["policy"] = {"inferences": rig.runner.inferences, "errors": rig.runner.errors,
                         "generation": rig.model.generation,
                         "last_infer_ms": round(o.infer_s * 1e3, 3) if o else None}
        out["resources"] = self.resources()
        if self.ota is not None:
            slots = self.ota.status()
            out["ota"] = {k: slots[k] for k in ("phase", "active", "lkg", "candidate",
                                                 "last_error")}
        return out

    def status_line(self) -> str:
        """One line for systemd's STATUS=."""
        st = self.rig.loop.status()
        return (f"mode={self.rig.modes.mode.value} rate={st['rate_hz']:.2f}Hz "
                f"p99={st['lateness_ms']['p99']:.2f}ms overruns={st['overruns']} "
                f"model={self.rig.model.id}")

    def telemetry(self) -> dict[str, Any]:
        """A cheap snapshot for the live view."""
        st = self.rig.loop.status()
        return {"mode": self.rig.modes.mode.value, "action": st.get("action", {}),
                "lateness_ms": st.get("lateness_ms", {}), "rate_hz": st.get("rate_hz", 0.0),
                "ticks": st.get("ticks", 0), "overruns": st.get("overruns", 0),
                "model": self.rig.model.id, "resources": self.resources(),
                "recorder": self.rig.episodes.status(), "t": time.time(),
                "ota": self.ota.brief() if self.ota is not None else None}

    # -- driving ----------------------------------------------------------------------------
    @command("mode", args=ModeArgs, http=("POST", "/mode"))
    def set_mode(self, args: ModeArgs, caller: Caller) -> dict[str, Any]:
        """Change mode: idle, manual, arm, drive, estop (latched) or reset."""
        origin = BY_REMOTE if caller.remote else BY_ROBOT
        try:
            new = self.rig.modes.request(args.mode, reason=args.reason or caller.describe(),
                                         origin=origin)
        except ForbiddenReset as e:
            raise Forbidden(str(e)) from None
        except ModeError as e:
            raise Refused(str(e)) from None
        log.info("mode -> %s (requested by %s)", new.value, caller)
        return {"mode": new.value}

    @command("mode.get", http=("GET", "/mode"))
    def get_mode(self, args: Args, caller: Caller) -> dict[str, Any]:
        """The current mode only (cheap: the trainer's resource monitor polls it)."""
        mode = self.rig.modes.mode
        return {"mode": mode.value, "mode_family": mode.family}

    @command("drive", args=DriveArgs, http=("POST", "/drive"))
    def drive(self, args: DriveArgs, caller: Caller) -> dict[str, Any]:
        """A manual command (-1..1 each) in MANUAL; it lapses after the deadman."""
        self.teleop(args.steering, args.throttle, str(caller))
        return {"accepted": True, "deadman_ms": self.cfg.safety.deadman_ms}

    def teleop(self, steering: float, throttle: float, client: str) -> None:
        """Store a teleop command (refreshing the deadman); Refused outside MANUAL. The API's
        WebSocket calls this for every message, `drive` for every request."""
        if not self.rig.modes.teleop(steering, throttle, client, time.monotonic()):
            raise Refused(f"not in manual mode (mode is {self.rig.modes.mode.value}); "
                          "switch to manual first")

    @command("sim.teach", args=TeachArgs, http=("POST", "/sim/teach"))
    def sim_teach(self, args: TeachArgs, caller: Caller) -> dict[str, Any]:
        """Simulator only, in MANUAL: the scripted teacher teleoperates for `seconds` (its
        commands enter like a human's, deadman and all), e.g. to record demonstrations."""
        if not hasattr(self.rig.robot.inner, "teacher_action"):
            raise Refused(f"the teacher exists only in the simulated car, not on this body "
                          f"({self.cfg.profile})")
        if self.rig.modes.mode.value != "manual":
            raise Refused(f"not in manual mode (mode is {self.rig.modes.mode.value}); switch "
                          "to manual first")
        if self._teach_hook not in self.rig.loop.pre_tick:
            self.rig.loop.pre_tick.append(self._teach_hook)
        self._teach_until = time.monotonic() + args.seconds
        return {"teaching_s": args.seconds}

    def _teach_hook(self, obs: Any) -> None:
        """Loop thread, before each tick while teaching: the teacher's command as teleop."""
        if time.monotonic() <= self._teach_until:
            a = self.rig.robot.teacher_action()
            self.rig.modes.teleop(a.steering, a.throttle, "teacher", obs.t)

    def teleop_release(self, client: str) -> None:
        """The teleop link of `client` closed or went silent: neutral now."""
        self.rig.modes.release(client)

    def latest_jpeg(self, max_age_s: float) -> tuple[bytes, float] | None:
        """The newest camera frame as JPEG and its capture time; each frame is encoded once,
        however many viewers."""
        import simplejpeg

        frame = self.rig.robot.latest_frame()
        if frame is None or time.monotonic() - frame.t_capture > max_age_s:
            return None
        with self._jpeg_lock:
            cached = self._jpeg
            if cached is not None and cached[0] == frame.seq:
                return cached[1], cached[2]
            data = simplejpeg.encode_jpeg(frame.image, quality=self.cfg.camera.jpeg_quality,
                                          colorspace="RGB", colorsubsampling="420")
            self._jpeg = (frame.seq, data, frame.t_capture)
            return data, frame.t_capture

    @command("stats.reset", http=("POST", "/stats/reset"))
    def stats_reset(self, args: Args, caller: Caller) -> dict[str, Any]:
        """Start the loop's lateness histograms and overrun counts afresh (benchmarks)."""
        self.rig.loop.reset_stats()
        return {"reset": True}

    # -- episodes -----------------------------------------------------------------------------
    @property
    def episodes_dir(self) -> Path:
        return self.cfg.layout.episodes

    @command("episodes.list", http=("GET", "/episodes"))
    def episodes_list(self, args: Args, caller: Caller) -> dict[str, Any]:
        """Recorded episodes, newest first."""
        return {"episodes": list(reversed(list_episodes(self.episodes_dir)))}

    @command("episodes.start", args=EpisodeStartArgs, http=("POST", "/episodes/start"))
    def episodes_start(self, args: EpisodeStartArgs, caller: Caller) -> dict[str, Any]:
        """Start recording an episode."""
        try:
            eid = self.rig.episodes.start(args.operator, args.language_instruction)
        except RecorderError as e:
            raise Refused(str(e)) from None
        return {"id": eid, "recording": True}

    @command("episodes.stop", http=("POST", "/episodes/stop"))
    def episodes_stop(self, args: Args, caller: Caller) -> dict[str, Any]:
        """Stop recording; the finished episode's summary."""
        try:
            return self.rig.episodes.stop("stopped")
        except RecorderError as e:
            raise Refused(str(e)) from None

    @command("episodes.status", http=("GET", "/episodes/status"))
    def episodes_status(self, args: Args, caller: Caller) -> dict[str, Any]:
        """Whether an episode is recording, and its counters."""
        return self.rig.episodes.status()

    @command("episodes.delete", args=EpisodeArgs, http=("DELETE", "/episodes/{id}"),
             blocking=True)
    def episodes_delete(self, args: EpisodeArgs, caller: Caller) -> dict[str, Any]:
        """Delete one episode."""
        try:
            delete_episode(self.episodes_dir, args.id)
        except EpisodeNotFound:
            raise NotFound(f"no episode {args.id!r}") from None
        except EpisodeBusy as e:
            raise Refused(str(e)) from None
        return {"deleted": args.id}

    # -- exports ------------------------------------------------------------------------------
    @property
    def exports_dir(self) -> Path:
        return self.cfg.layout.exports

    @command("exports.list", http=("GET", "/exports"))
    def exports_list(self, args: Args, caller: Caller) -> dict[str, Any]:
        """Export archives on the robot, newest first, with their sizes."""
        items = []
        if self.exports_dir.is_dir():
            for p in self.exports_dir.iterdir():
                if EXPORT_NAME.fullmatch(p.name) and p.is_file():
                    st = p.stat()
                    items.append({"name": p.name, "size": st.st_size, "created": st.st_mtime,
                                  "url": f"/api/v1/exports/{p.name}"})
        items.sort(key=lambda e: (e["created"], e["name"]), reverse=True)
        return {"exports": items}

    def export_path(self, name: str) -> Path:
        """The archive called `name` (a name, never a path); NotFound otherwise."""
        if not EXPORT_NAME.fullmatch(name):
            raise NotFound(f"no export named {name!r}")
        path = self.exports_dir / name
        if not path.is_file():
            raise NotFound(f"no export named {name!r}")
        return path

    @command("exports.delete", args=ExportNameArgs, http=("DELETE", "/exports/{name}"))
    def exports_delete(self, args: ExportNameArgs, caller: Caller) -> dict[str, Any]:
        """Delete one export archive."""
        path = self.export_path(args.name)
        path.unlink()
        fsync_dir(path.parent)
        return {"deleted": args.name}

    @command("episodes.export", args=ExportArgs, http=("POST", "/episodes/export"),
             blocking=True)
    def episodes_export(self, args: ExportArgs, caller: Caller) -> dict[str, Any]:
        """Export episodes (all when none named) as an RLDS tar archive to download."""
        from brain.procs import run_niced
        from brain.rlds.export import ExportError, ExportNoSpace, prepare_cloud_export

        if not self._export_lock.acquire(blocking=False):
            raise Refused("an export is already running; try again when it has finished")
        try:
            exports = self.exports_dir
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            out = exports / f"rlds-{stamp}"
            n = 1
            while out.exists() or out.with_suffix(".tar").exists():
                n += 1
                out = exports / f"rlds-{stamp}-{n}"
            # The heavy work (load, validate, serialise, hash, tar) runs in niced worker
            # processes: CPU-bound Python here would compete with the control loop for the GIL.
            # Free space must hold the export twice (directory, then tar) and still leave the
            # recorder its minimum.
            try:
                prepare_cloud_export(self.episodes_dir, out, episode_ids=args.ids or None,
                                     anonymize=args.anonymize, origin=self.cfg.export.origin,
                                     isolate=True, space_factor=2.0,
                                     reserve_bytes=self.cfg.recorder.min_free_mb << 20)
                archive = run_niced(pack_archive, out)
            except EpisodeNotFound as e:  # the store's message names a server path: not here
                missing = [i for i in args.ids if i in str(e)] or args.ids
                raise NotFound(f"no episode {missing[0]!r}") from None
            except ExportNoSpace as e:
                raise InsufficientStorage(f"{e} (DELETE /api/v1/exports/NAME removes old "
                                          "exports)") from None
            except (ExportError, EpisodeError) as e:
                raise Refused(str(e)) from None
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise InsufficientStorage(
                    f"the disk holding {exports.name}/ filled up while packing the export; it "
                    "was removed. Delete old exports or episodes and try again") from None
            finally:
                shutil.rmtree(out, ignore_errors=True)  # packed, or a failure's leftovers
            removed = self._prune_exports(keep=archive.name)
        finally:
            self._export_lock.release()
        return {"name": archive.name, "size": archive.stat().st_size,
                "url": f"/api/v1/exports/{archive.name}", "pruned": removed}

    def _prune_exports(self, keep: str) -> list[str]:
        """Keep at most export.keep_count archives and export.keep_mb MiB of them (the newest
        ones, `keep` always); delete the rest."""
        items = self.exports_list(Args(), LOCAL)["exports"]  # newest first
        limit_n, limit_bytes = self.cfg.export.keep_count, self.cfg.export.keep_mb << 20
        removed, total = [], 0
        for n, item in enumerate(items):
            total += item["size"]
            if item["name"] != keep and (n >= limit_n or total > limit_bytes):
                (self.exports_dir / item["name"]).unlink(missing_ok=True)
                removed.append(item["name"])
        if removed:
            fsync_dir(self.exports_dir)
            log.info("export retention removed %s", ", ".join(removed))
        return removed

    # -- health -------------------------------------------------------------------------------
    @command("diagnostics", http=("GET", "/diagnostics"), blocking=True)
    def diagnostics(self, args: Args, caller: Caller) -> dict[str, Any]:
        """The health report (what `brain health --json` prints)."""
        from brain.diag.health import report, run_checks

        return report(run_checks(self.cfg, self.status, quick=True))

    # -- OTA -------------------------------------------------------------------------------------
    def _ota(self) -> OtaManager:
        if self.ota is None:
            raise Unavailable("this service runs without the OTA manager")
        return self.ota

    @command("ota.status", http=("GET", "/ota"))
    def ota_status(self, args: Args, caller: Caller) -> dict[str, Any]:
        """Slots (active, last known good, candidate), phase, floor and the last error."""
        return self._ota().status()

    @command("ota.list", http=("GET", "/ota/bundles"))
    def ota_list(self, args: Args, caller: Caller) -> dict[str, Any]:
        """Bundles in the store, with their roles and any failure report."""
        return self._ota().list()

    @command("ota.install", args=OtaInstallArgs, http=("POST", "/ota/install"), blocking=True)
    def ota_install(self, args: OtaInstallArgs, caller: Caller) -> dict[str, Any]:
        """Verify and stage a bundle (URL, or a path on the robot), then start its trial."""
        from brain.ota.bundle import BundleError
        from brain.ota.manager import OtaError

        ota = self._ota()
        remote_url = args.source.startswith(("http://", "https://"))
        if caller.remote and not remote_url:
            raise Invalid("over the API a bundle comes as an upload (POST /api/v1/ota) or "
                          "an http(s) URL, not a path on the robot")
        path: Path | None = None
        try:
            path = ota.download(args.source) if remote_url else Path(args.source)
            return ota.install(path)
        except BundleError as e:
            raise Rejected(str(e), reason=e.reason) from None
        except OtaError as e:
            raise Refused(str(e)) from None
        except OSError as e:
            raise Refused(f"cannot read the bundle: {e.strerror or e}") from None
        finally:
            if remote_url and path is not None:  # the store has what it needs, or nothing
                path.unlink(missing_ok=True)

    def ota_upload(self, path: Path) -> dict[str, Any]:
        """A bundle a paired client uploaded (the API spooled it to `path`)."""
        from brain.ota.bundle import BundleError
        from brain.ota.manager import OtaError

        try:
            return self._ota().install(path)
        except BundleError as e:
            raise Rejected(str(e), reason=e.reason) from None
        except OtaError as e:
            raise Refused(str(e)) from None
        finally:
            path.unlink(missing_ok=True)

    @command("ota.rollback", http=("POST", "/ota/rollback"), blocking=True)
    def ota_rollback(self, args: Args, caller: Caller) -> dict[str, Any]:
        """Abort a trial, or return to the previously committed bundle."""
        from brain.ota.manager import OtaError

        try:
            return self._ota().rollback()
        except OtaError as e:
            raise Refused(str(e)) from None

    @command("ota.commit", http=("POST", "/ota/commit"), blocking=True)
    def ota_commit(self, args: Args, caller: Caller) -> dict[str, Any]:
        """End a running trial's probation now and commit it."""
        from brain.ota.manager import OtaError

        try:
            return self._ota().commit_now()
        except OtaError as e:
            raise Refused(str(e)) from None

    @command("ota.gc", http=("POST", "/ota/gc"), blocking=True)
    def ota_gc(self, args: Args, caller: Caller) -> dict[str, Any]:
        """Remove stored bundles nothing refers to (never the factory bundle)."""
        return self._ota().gc()

    # -- training jobs (the worker trains; this reads its store and queues requests) ----------
    @command("training.start", args=TrainingStartArgs, http=("POST", "/training"))
    def training_start(self, args: TrainingStartArgs, caller: Caller) -> dict[str, Any]:
        """Queue a training job; its id at once (the trainer worker runs it)."""
        from pydantic import ValidationError

        from brain.train import jobs
        from brain.train.settings import TrainSettings

        try:
            settings = TrainSettings.model_validate(args.config)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err.get("loc", ())) or "config"
            raise Invalid(f"config.{where}: {err.get('msg')}") from None
        return jobs.start(self.cfg.layout.train, settings.model_dump(mode="json"),
                          args.priority, list(args.episodes),
                          "api" if caller.remote else "socket")

    @command("training.list", args=TrainingListArgs, http=("GET", "/training"))
    def training_list(self, args: TrainingListArgs, caller: Caller) -> dict[str, Any]:
        """Training jobs, newest first, and whether a worker is alive."""
        from brain.train.jobs import JobStore, worker_note

        store = JobStore.reader(self.cfg.layout.train)
        try:
            rows = store.jobs(args.status, args.limit) if store is not None else []
            note = worker_note(store)
        finally:
            if store is not None:
                store.close()
        return {"jobs": rows, "worker": note is None, "note": note,
                "promotion": self.cfg.ota.allow_local_promotion}

    @command("training.get", args=JobArgs, http=("GET", "/training/{id}"), blocking=True)
    def training_get(self, args: JobArgs, caller: Caller) -> dict[str, Any]:
        """One job: status, progress, newest metric, checkpoints, the gate's verdict."""
        from brain.train import jobs

        try:
            return jobs.describe(self.cfg.layout.train, args.id)
        except jobs.NoSuchJob as e:
            raise NotFound(str(e)) from None

    @command("training.metrics", args=TrainingMetricsArgs, http=("GET", "/training/{id}/metrics"))
    def training_metrics(self, args: TrainingMetricsArgs, caller: Caller) -> dict[str, Any]:
        """A job's loss, validation loss, learning rate and steps/s per logged step."""
        with self._job_store(args.id) as store:
            return {"id": args.id, "metrics": store.metrics(args.id, args.every)}

    @command("training.logs", args=TrainingLogsArgs, http=("GET", "/training/{id}/logs"))
    def training_logs(self, args: TrainingLogsArgs, caller: Caller) -> dict[str, Any]:
        """A job's log lines after `after`."""
        with self._job_store(args.id) as store:
            return {"id": args.id, "logs": store.logs(args.id, args.after)}

    @contextmanager
    def _job_store(self, job_id: str) -> Iterator[Any]:
        """The job store, read-only, once `job_id` is known to be in it (NotFound if not)."""
        from brain.train.jobs import JobStore, NoSuchJob

        store = JobStore.reader(self.cfg.layout.train)
        if store is None:
            raise NotFound(f"no job {job_id}")
        try:
            store.job(job_id)
        except NoSuchJob as e:
            store.close()
            raise NotFound(str(e)) from None
        try:
            yield store
        finally:
            store.close()

    @command("training.stop", args=JobArgs, http=("POST", "/training/{id}/stop"))
    def training_stop(self, args: JobArgs, caller: Caller) -> dict[str, Any]:
        """Stop a job: a running one checkpoints first, then it is cancelled."""
        return self._training_request("stop", args.id)

    @command("training.resume", args=JobArgs, http=("POST", "/training/{id}/resume"))
    def training_resume(self, args: JobArgs, caller: Caller) -> dict[str, Any]:
        """Queue a cancelled, failed or waiting job again, from its last checkpoint."""
        return self._training_request("resume", args.id)

    def _training_request(self, op: str, job_id: str) -> dict[str, Any]:
        from brain.train import jobs

        try:
            return jobs.request(self.cfg.layout.train, op, job_id)
        except jobs.NoSuchJob as e:
            raise NotFound(str(e)) from None
        except jobs.JobError as e:
            raise Refused(str(e)) from None

    @command("training.promote", args=JobArgs, http=("POST", "/training/{id}/promote"),
             blocking=True)
    def training_promote(self, args: JobArgs, caller: Caller) -> dict[str, Any]:
        """Install a job's candidate, which passed the gate, through OTA (trial, then commit);
        only with ota.allow_local_promotion."""
        from brain.ota.bundle import BundleError
        from brain.ota.manager import OtaError
        from brain.train import jobs

        if not self.cfg.ota.allow_local_promotion:
            raise Forbidden("local promotion is off (ota.allow_local_promotion)")
        try:
            job = jobs.describe(self.cfg.layout.train, args.id)
        except jobs.NoSuchJob as e:
            raise NotFound(str(e)) from None
        gate = job.get("gate") or {}
        if job["status"] != "completed" or not gate.get("passed") or not job.get("bundle"):
            raise Refused(f"job {args.id} has no candidate that passed the gate "
                          f"({job['status']}: {job.get('reason') or 'no verdict'})")
        try:
            return self._ota().install(Path(job["bundle"]))
        except BundleError as e:
            raise Rejected(str(e), reason=e.reason) from None
        except OtaError as e:
            raise Refused(str(e)) from None
        except OSError as e:
            raise Refused(f"cannot read the bundle: {e.strerror or e}") from None

    # -- pairing (local admin only: the socket's file permissions are the authentication) ----
    def _pairing(self) -> Pairing:
        if self.pairing is None:
            raise Unavailable("pairing needs the API (api.enabled = true)")
        return self.pairing

    @command("pair")
    def pair_code(self, args: Args, caller: Caller) -> dict[str, Any]:
        """A fresh 6-digit pairing code, with the TLS certificate's SHA-256 fingerprint a
        companion pairing by URL (no mDNS) pins (None with api.tls off)."""
        code = self._pairing().new_code()
        return {**code, "tls_fingerprint": self._tls_fingerprint()}

    def _tls_fingerprint(self) -> str | None:
        if not self.cfg.api.tls:
            return None
        from brain.api.tls import CERT_NAME, fingerprint_pem

        try:
            return fingerprint_pem((self.cfg.layout.api / CERT_NAME).read_bytes())
        except (OSError, ValueError):
            return None  # the API has not written its certificate (yet)

    @command("pair.list")
    def pair_list(self, args: Args, caller: Caller) -> list[dict[str, Any]]:
        """Paired clients."""
        return self._pairing().list()

    @command("pair.revoke", args=RevokeArgs)
    def pair_revoke(self, args: RevokeArgs, caller: Caller) -> dict[str, Any]:
        """Revoke a client's token (and its tickets)."""
        from brain.api.pairing import StoreError

        try:
            return self._pairing().revoke(args.name)
        except KeyError as e:
            raise NotFound(str(e.args[0]) if e.args else "no such client") from None
        except StoreError as e:
            raise (InsufficientStorage if e.no_space else Unavailable)(str(e)) from None

    # -- test hooks (BRAIN_TEST_HOOKS=1 only) --------------------------------------------------
    @command("debug.stall", args=StallArgs)
    def debug_stall(self, args: StallArgs, caller: Caller) -> dict[str, Any]:
        """Test hook: make the control loop hang (simulates a stuck driver)."""
        if not self.test_hooks:
            raise Unavailable("test hooks are off (BRAIN_TEST_HOOKS=1 enables them)")
        self.rig.loop.stall(args.seconds)
        return {"stalling_s": args.seconds}


def clean_exports(exports: Path) -> list[str]:
    """At start-up: remove what exports killed mid-way left in `exports` (scratch, and an
    unpacked export whose tar was never finished; only finished .tar archives are served)."""
    from brain.rlds.export import clean_stale_temps

    removed = clean_stale_temps(exports)
    if exports.is_dir():
        for path in exports.iterdir():
            if path.is_dir() and not path.is_symlink() and EXPORT_DIR.fullmatch(path.name):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
    return removed


def pack_archive(out: Path) -> Path:
    """Pack the export directory `out` as `out`.tar (fsynced, published atomically), then
    remove `out`. Runs in a worker process (see `RobotService.episodes_export`); a failure
    removes the partial tar (and the caller removes `out`)."""
    archive = out.with_suffix(".tar")
    tmp = archive.with_name(f".{archive.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            with tarfile.open(fileobj=fh, mode="w") as tar:  # JPEGs do not compress: plain tar
                tar.add(out, arcname=out.name)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(archive)
        fsync_dir(archive.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    shutil.rmtree(out)
    return archive

