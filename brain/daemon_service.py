"""The daemon's side of the API seam (`brain.api.service.BrainService`).

Every method answers from snapshots or hands work to another thread; none takes a lock the
control loop holds for longer than an attribute swap, so no HTTP client can delay a tick.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import simplejpeg

from brain.durable import fsync_dir
from brain.rlds.export import ExportError, prepare_cloud_export, run_niced
from brain.rlds.recorder import RecorderError
from brain.rlds.store import (
    EpisodeBusy,
    EpisodeError,
    EpisodeNotFound,
    delete_episode,
    list_episodes,
)

if TYPE_CHECKING:
    from brain.daemon import Daemon

log = logging.getLogger(__name__)

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")


def cpu_temperature() -> float | None:
    try:
        return int(THERMAL_ZONE.read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


class DaemonService:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self._callbacks: list[Callable[[], None]] = []
        self._jpeg_lock = threading.Lock()
        self._jpeg: tuple[int, bytes, float] | None = None  # (frame seq, bytes, t_capture)
        self._export_lock = threading.Lock()
        psutil.cpu_percent(None)  # prime: the next call reports usage since now

    # -- identity and status ------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        ident = self.d.identity
        return {"id": ident["id"], "name": ident["name"], "version": ident["version"],
                "model": self.d.model_id()}

    def resources(self) -> dict[str, Any]:
        vm = psutil.virtual_memory()
        return {"cpu": psutil.cpu_percent(None), "mem": vm.percent,
                "mem_available_mb": vm.available >> 20, "temp": cpu_temperature()}

    def status(self) -> dict[str, Any]:
        st = self.d.status()
        st["resources"] = self.resources()
        st.setdefault("recorder", {"recording": False})
        return st

    def telemetry(self) -> dict[str, Any]:
        loop = self.d.loop
        st = loop.status() if loop is not None else {}
        episodes = self.d.episodes
        return {"mode": self.d.modes.mode.value, "action": st.get("action", {}),
                "lateness_ms": st.get("lateness_ms", {}), "rate_hz": st.get("rate_hz", 0.0),
                "ticks": st.get("ticks", 0), "overruns": st.get("overruns", 0),
                "model": self.d.model_id(), "resources": self.resources(),
                "recorder": episodes.status() if episodes is not None else {"recording": False},
                "t": time.time()}

    def on_change(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def changed(self) -> None:
        for cb in list(self._callbacks):
            try:
                cb()
            except Exception:
                log.exception("change callback failed")

    # -- driving ---------------------------------------------------------------------------------
    def set_mode(self, mode: str) -> dict[str, Any]:
        new = self.d.modes.request(mode, reason="api")
        log.info("mode -> %s (requested over the API)", new.value)
        return {"mode": new.value}

    def teleop(self, steering: float, throttle: float, client: str) -> None:
        self.d.modes.teleop(steering, throttle, client, time.monotonic())

    def teleop_release(self, client: str) -> None:
        self.d.modes.release(client)

    def latest_jpeg(self, max_age_s: float) -> tuple[bytes, float] | None:
        robot = self.d.robot
        frame = robot.latest_frame() if robot is not None else None
        if frame is None or time.monotonic() - frame.t_capture > max_age_s:
            return None
        with self._jpeg_lock:  # encode each frame at most once, however many viewers
            cached = self._jpeg
            if cached is not None and cached[0] == frame.seq:
                return cached[1], cached[2]
            data = simplejpeg.encode_jpeg(frame.image, quality=self.d.cfg.camera.jpeg_quality,
                                          colorspace="RGB", colorsubsampling="420")
            self._jpeg = (frame.seq, data, frame.t_capture)
            return data, frame.t_capture

    # -- episodes --------------------------------------------------------------------------------
    @property
    def episodes_dir(self) -> Path:
        return self.d.cfg.state_path / "rlds" / "episodes"

    def episodes_list(self) -> list[dict[str, Any]]:
        return list_episodes(self.episodes_dir)

    def episodes_start(self, operator: str, language_instruction: str) -> dict[str, Any]:
        if self.d.episodes is None:
            raise ValueError("the recorder is not running")
        try:
            eid = self.d.episodes.start(operator, language_instruction)
        except RecorderError as e:
            raise ValueError(str(e)) from None
        return {"id": eid, "recording": True}

    def episodes_stop(self) -> dict[str, Any]:
        if self.d.episodes is None:
            raise ValueError("the recorder is not running")
        try:
            return self.d.episodes.stop("stopped")
        except RecorderError as e:
            raise ValueError(str(e)) from None

    def episodes_delete(self, episode_id: str) -> None:
        try:
            delete_episode(self.episodes_dir, episode_id)
        except EpisodeNotFound as e:
            raise KeyError(str(e)) from None
        except EpisodeBusy as e:
            raise ValueError(str(e)) from None

    def episodes_export(self, ids: list[str], anonymize: bool) -> Path:
        exports = self.d.cfg.state_path / "exports"
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        with self._export_lock:  # one export at a time: they are disk- and CPU-heavy
            out = exports / f"rlds-{stamp}"
            n = 1
            while out.exists() or out.with_suffix(".tar").exists():
                n += 1
                out = exports / f"rlds-{stamp}-{n}"
            # The heavy work (load, validate, serialise, hash, tar) runs in niced worker
            # processes: CPU-bound Python in this process would compete with the control loop
            # for the GIL. This thread only lists, renames and writes the small metadata.
            try:
                prepare_cloud_export(self.episodes_dir, out, episode_ids=ids or None,
                                     anonymize=anonymize, origin=self.d.cfg.export.origin,
                                     isolate=True)
            except EpisodeNotFound as e:
                raise KeyError(str(e)) from None
            except (ExportError, EpisodeError) as e:
                raise ValueError(str(e)) from None
            return run_niced(pack_archive, out)

    # -- health ------------------------------------------------------------------------------------
    def diagnostics(self) -> dict[str, Any]:
        from brain.diag.health import report, run_checks

        return report(run_checks(self.d.cfg, _InProcessClient(self.d), quick=True))


def pack_archive(out: Path) -> Path:
    """Pack the export directory `out` as `out`.tar (fsynced, published atomically), then
    remove `out`. Runs in a worker process (see `DaemonService.episodes_export`)."""
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


class _InProcessClient:
    """What the health checks use to ask the daemon for its status, without a socket."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    def call(self, cmd: str, **args: Any) -> Any:
        if cmd == "status":
            return self.d.status(histogram=bool(args.get("histogram")))
        raise ValueError(f"unsupported command {cmd!r}")
