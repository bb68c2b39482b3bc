"""The episode recorder: takes steps from the control thread and frames from the camera, and
writes them to the episode's write-ahead log without ever making the control loop wait.

Threads per episode: a frame thread (waits for new camera frames, JPEG-encodes each once;
simplejpeg releases the GIL while encoding, measured here) and a writer thread (pairs steps with
frames by timestamp, appends records, flushes and fsyncs on a bounded interval, watches free disk
space and the episode length). The control thread only appends to a deque (atomic under the GIL).
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import simplejpeg

from brain.durable import atomic_write_json, fsync_dir
from brain.hardware.robot import Frame
from brain.rlds.logformat import encode_frame, encode_step
from brain.rlds.schema import step_record
from brain.rlds.store import (
    EPISODE_FILE,
    FORMAT_VERSION,
    LOCK_FILE,
    LOG_FILE,
    new_episode_id,
    try_lock,
)
from brain.rlds.tfrecord import append_record

log = logging.getLogger(__name__)

# A frame "belongs" to a tick when captured at or before it; the simulator stamps frames with the
# tick's own t_mono, so equality must count, and float noise must not break it.
SYNC_EPSILON_S = 1e-6
_STEP_QUEUE_MAX = 4096  # ~80 s at 50 Hz: only a stalled disk fills it
_FRAME_QUEUE_MAX = 64
# The writer wakes every _POLL_S, not per step: a thread wake-up costs 70-110 µs of CPU on
# this VM, and at 10 ms the writer alone spent 0.013 CPU-s per recorded second (bench/record.py;
# the recorder's budget is 0.035). It still wakes on time for every fsync (see _writer), so the
# data-at-risk bound does not move; stopping takes up to one poll longer.
_POLL_S = 0.1
_DISK_CHECK_S = 1.0


class RecorderError(RuntimeError):
    """An episode could not be started or stopped; the message says why."""


class FrameSource(Protocol):
    def wait_newer(self, seq: int, timeout: float) -> Frame | None: ...
    def latest(self) -> Frame | None: ...
    def subscribe(self) -> int: ...
    def unsubscribe(self, cid: int) -> None: ...
    def ack(self, cid: int, seq: int) -> None: ...


@dataclass(frozen=True)
class StepSample:
    """One control tick while recording, built by the control loop."""

    t_mono: float  # time.monotonic() of the tick's observation
    t_wall: float  # time.time() at the same moment
    state: np.ndarray  # float32 robot state vector (names given in episode metadata)
    action: tuple[float, float]  # (steering, throttle) actually applied after clamping
    reward: float
    discount: float
    is_terminal: bool
    mode: str  # "manual", "autonomous", ...
    language_instruction: str = ""


@dataclass
class _Encoded:
    seq: int
    t_capture: float
    shape: tuple[int, int, int]
    jpeg: bytes
    index: int = -1  # ordinal among the episode's frame records once written


class _Session:
    """Everything about one open episode; shared by the three threads."""

    def __init__(self, episode_id: str, path: Path, meta: dict[str, Any], lock_fd: int) -> None:
        self.id = episode_id
        self.path = path
        self.meta = meta
        self.lock_fd = lock_fd
        self.steps_in: collections.deque[StepSample] = collections.deque()
        self.frames_in: collections.deque[_Encoded] = collections.deque()
        self.stop = threading.Event()  # no more steps accepted; the writer drains and finishes
        self.encoder_stop = threading.Event()  # set by the writer once no step needs a frame
        self.stop_reason = "stopped"
        self.done = threading.Event()
        self.summary: dict[str, Any] = {}
        self.handed = 0  # steps accepted from the control thread
        self.dropped_steps = 0
        self.steps = 0  # steps written
        self.frames = 0  # frame records written
        self.frames_seen = 0
        self.dropped_frames = 0  # camera frames the recorder never saw or had to discard
        self.unused_frames = 0  # frames superseded before any step referenced them
        self.bytes = 0
        self.log_crc = 0  # CRC32C of the log's first `bytes` bytes (writer thread)
        self.synced_steps = 0
        self.t_start = time.monotonic()
        self.error: str | None = None


class Recorder:
    def __init__(self, episodes_dir: Path, frame_source: FrameSource | None, *,
                 jpeg_quality: int = 75, fsync_interval_s: float = 0.5,
                 min_free_bytes: int = 512 << 20, max_episode_s: float = 600.0,
                 frame_wait_s: float = 0.1, lockstep: bool = False) -> None:
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be 1..100, got {jpeg_quality}")
        if not 0 < fsync_interval_s <= 1.0:
            raise ValueError(f"fsync_interval_s must be in (0, 1], got {fsync_interval_s}")
        self.episodes_dir = Path(episodes_dir)
        self.frame_source = frame_source
        self.jpeg_quality = jpeg_quality
        self.fsync_interval_s = fsync_interval_s
        self.min_free_bytes = min_free_bytes
        self.max_episode_s = max_episode_s
        self.frame_wait_s = frame_wait_s
        # Simulated time (brain.hardware.sim lockstep): the camera waits for the encoder to
        # ack each frame, and every frame is in when the loop stops, so a stop settles at once.
        self.lockstep = lockstep
        self._lock = threading.Lock()  # start/stop/status only; never taken by on_step
        self._session: _Session | None = None
        self._threads: list[threading.Thread] = []
        self._last: dict[str, Any] | None = None

    # -- control-socket side ------------------------------------------------------------------

    def start_episode(self, metadata: dict[str, Any]) -> str:
        with self._lock:
            self._reap()
            if self._session is not None:
                raise RecorderError(f"episode {self._session.id} is already recording")
            self.episodes_dir.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.episodes_dir).free
            if free < self.min_free_bytes:
                raise RecorderError(
                    f"only {free >> 20} MiB free in {self.episodes_dir}, below the "
                    f"{self.min_free_bytes >> 20} MiB minimum (recorder.min_free_mb); "
                    "free some space or delete episodes")
            t_wall = time.time()
            episode_id = new_episode_id(t_wall)
            meta = {
                "format": FORMAT_VERSION, "id": episode_id, "status": "recording",
                "started_wall": t_wall, "jpeg_quality": self.jpeg_quality,
                "metadata": dict(metadata),
            }
            # Build under a dot-name, then rename: a crash never leaves a half-made episode.
            tmp = self.episodes_dir / f".new-{episode_id}"
            tmp.mkdir()
            lock_fd = try_lock(tmp / LOCK_FILE)
            assert lock_fd is not None  # nobody else can know this fresh directory
            try:
                (tmp / LOG_FILE).touch()
                atomic_write_json(tmp / EPISODE_FILE, meta)
                final = self.episodes_dir / episode_id
                os.replace(tmp, final)
                fsync_dir(self.episodes_dir)
                fh = open(final / LOG_FILE, "ab", buffering=1 << 20)  # noqa: SIM115
            except BaseException:
                os.close(lock_fd)
                raise
            s = _Session(episode_id, final, meta, lock_fd)
            self._threads = [
                threading.Thread(target=self._writer, args=(s, fh), name="rlds-writer",
                                 daemon=True)]
            if self.frame_source is not None:
                self._threads.append(threading.Thread(target=self._encoder, args=(s,),
                                                      name="rlds-frames", daemon=True))
            for t in self._threads:
                t.start()
            self._session = s
            log.info("recording episode %s", episode_id)
            return episode_id

    def stop_episode(self, reason: str = "stopped") -> dict[str, Any]:
        with self._lock:
            s = self._session
            if s is None:
                if self._last is not None:
                    last, self._last = self._last, None
                    return last  # it stopped itself (disk, length, error); report that once
                raise RecorderError("no episode is recording")
            if not s.stop.is_set():
                s.stop_reason = reason
                s.stop.set()
            for t in self._threads:
                t.join()
            self._threads = []
            self._session = None
            self._last = None
            return s.summary

    def status(self) -> dict[str, Any]:
        s = self._session
        if s is None or s.done.is_set():
            return {"recording": False, "last_episode": (s.summary if s else self._last)}
        return {
            "recording": True, "episode_id": s.id, "steps": s.steps, "steps_handed": s.handed,
            "dropped_steps": s.dropped_steps, "frames": s.frames,
            "dropped_frames": s.dropped_frames, "bytes": s.bytes,
            "duration_s": time.monotonic() - s.t_start,
        }

    def close(self) -> None:
        with self._lock:
            self._reap()
            open_ = self._session is not None
        if open_:
            self.stop_episode("shutdown")

    def _reap(self) -> None:
        """Collect a session that ended on its own (called with the lock held)."""
        s = self._session
        if s is not None and s.done.is_set():
            for t in self._threads:
                t.join()
            self._threads = []
            self._session = None
            self._last = s.summary

    # -- control thread -----------------------------------------------------------------------

    def on_step(self, step: StepSample) -> None:
        """Hand one tick over. O(1), no I/O, never blocks, never raises."""
        try:
            s = self._session
            if s is None or s.stop.is_set():
                return
            if len(s.steps_in) >= _STEP_QUEUE_MAX:
                s.dropped_steps += 1
                return
            s.steps_in.append(step)
            s.handed += 1
        except Exception:  # the loop must never see a recorder fault
            pass

    # -- frame thread -------------------------------------------------------------------------

    def _encoder(self, s: _Session) -> None:
        src = self.frame_source
        assert src is not None
        subscriber = src.subscribe() if self.lockstep else None
        try:
            self._encode_frames(s, src, subscriber)
        finally:
            if subscriber is not None:
                src.unsubscribe(subscriber)

    def _encode_frames(self, s: _Session, src: FrameSource, subscriber: int | None) -> None:
        last_seq = -1
        while not s.encoder_stop.is_set():
            frame = None
            try:
                frame = src.wait_newer(last_seq, 0.1)
                if frame is None:
                    continue
                if last_seq >= 0 and frame.seq > last_seq + 1:
                    s.dropped_frames += frame.seq - last_seq - 1
                last_seq = frame.seq
                if subscriber is not None:  # lockstep: never drop a frame, wait for room
                    while len(s.frames_in) >= _FRAME_QUEUE_MAX and not s.encoder_stop.is_set():
                        time.sleep(0.002)
                elif len(s.frames_in) >= _FRAME_QUEUE_MAX:
                    s.dropped_frames += 1
                    continue
                img = np.ascontiguousarray(frame.image)
                jpeg = simplejpeg.encode_jpeg(img, self.jpeg_quality, colorspace="RGB",
                                              colorsubsampling="420")
                s.frames_in.append(_Encoded(frame.seq, frame.t_capture, img.shape, jpeg))
                s.frames_seen += 1
            except Exception as e:  # a bad frame costs that frame, not the episode
                s.dropped_frames += 1
                log.warning("episode %s: frame not recorded: %s", s.id, e)
            finally:
                if subscriber is not None and frame is not None:
                    src.ack(subscriber, frame.seq)

    # -- writer thread ------------------------------------------------------------------------

    def _writer(self, s: _Session, fh: Any) -> None:
        pending: collections.deque[StepSample] = collections.deque()
        frames: list[_Encoded] = []  # candidates, capture order; frames[0] may be in use
        prev_frame = -1
        last_sync = last_disk = time.monotonic()
        # Also re-check free space after writing an eighth of the margin, so a fast writer
        # cannot run through the margin between two timed checks.
        disk_bytes, disk_every = 0, max(self.min_free_bytes // 8, 1 << 16)
        has_camera = self.frame_source is not None
        try:
            while True:
                stopping = s.stop.is_set()
                while s.frames_in:
                    frames.append(s.frames_in.popleft())
                while s.steps_in:
                    pending.append(s.steps_in.popleft())
                now = time.monotonic()
                while pending:
                    step = pending[0]
                    limit = step.t_mono + SYNC_EPSILON_S
                    # Decided once a later frame exists, or after waiting long enough.
                    settled = (not has_camera or any(f.t_capture > limit for f in frames)
                               or now - step.t_mono > self.frame_wait_s
                               or (stopping and self.lockstep))
                    if not settled:
                        break
                    pending.popleft()
                    chosen = None
                    while frames and frames[0].t_capture <= limit:
                        if len(frames) > 1 and frames[1].t_capture <= limit:
                            gone = frames.pop(0)
                            if gone.index < 0:
                                s.unused_frames += 1
                            continue
                        chosen = frames[0]
                        break
                    if chosen is not None and chosen.index < 0:
                        n, s.log_crc = append_record(fh, encode_frame(
                            chosen.seq, chosen.t_capture, chosen.shape, chosen.jpeg), s.log_crc)
                        s.bytes += n
                        chosen.index = s.frames
                        s.frames += 1
                        s.meta.setdefault("image_shape", list(chosen.shape))
                    n, s.log_crc = append_record(fh, encode_step(step_record(
                        s.steps, t_mono=step.t_mono, t_wall=step.t_wall, state=step.state,
                        action=step.action, reward=step.reward, discount=step.discount,
                        is_terminal=step.is_terminal, mode=step.mode,
                        language_instruction=step.language_instruction,
                        frame=chosen.index if chosen is not None else -1,
                        frame_skew_ms=(step.t_mono - chosen.t_capture) * 1000.0
                        if chosen is not None else None,
                        frame_new=chosen is not None and chosen.index != prev_frame)),
                        s.log_crc)
                    s.bytes += n
                    prev_frame = chosen.index if chosen is not None else -1
                    s.steps += 1
                if now - last_sync >= self.fsync_interval_s:
                    fh.flush()
                    os.fdatasync(fh.fileno())
                    s.synced_steps = s.steps
                    last_sync = now
                if stopping and not pending and not s.steps_in:
                    break
                if not stopping:
                    if now - last_disk >= _DISK_CHECK_S or s.bytes - disk_bytes >= disk_every:
                        last_disk, disk_bytes = now, s.bytes
                        if shutil.disk_usage(s.path).free < self.min_free_bytes:
                            self._self_stop(s, "disk_low: free space fell below the minimum")
                    if now - s.t_start >= self.max_episode_s:
                        self._self_stop(s, f"max_duration: reached {self.max_episode_s:g} s")
                    # Wake on time for the next fsync (a plain sleep: cheaper than Event.wait).
                    time.sleep(min(_POLL_S, max(last_sync + self.fsync_interval_s - now, 0.001)))
                elif pending:
                    time.sleep(_POLL_S)
            s.encoder_stop.set()
            s.unused_frames += sum(1 for f in frames if f.index < 0) + len(s.frames_in)
            self._finish(s, fh, "complete")
        except Exception as e:
            log.error("episode %s: recording failed: %s", s.id, e)
            s.error = f"{type(e).__name__}: {e}"
            s.stop.set()
            s.encoder_stop.set()
            try:
                self._finish(s, fh, "incomplete")
            except Exception as e2:  # leave it for recovery on the next start
                log.error("episode %s: could not finalise: %s", s.id, e2)
                os.close(s.lock_fd)
                s.summary = {"id": s.id, "status": "recording", "error": s.error}
                s.done.set()

    def _self_stop(self, s: _Session, reason: str) -> None:
        log.warning("episode %s: stopping: %s", s.id, reason)
        s.stop_reason = reason
        s.stop.set()

    def _finish(self, s: _Session, fh: Any, status: str) -> None:
        """Make the log durable, then publish the final metadata atomically."""
        try:
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fh.close()
        s.synced_steps = s.steps
        t_end = time.time()
        s.meta.update(
            status=status, ended_wall=t_end, duration_s=time.monotonic() - s.t_start,
            end_reason=s.stop_reason if s.error is None else f"error: {s.error}",
            steps=s.steps, frames=s.frames, steps_handed=s.handed,
            dropped_steps=s.dropped_steps, dropped_frames=s.dropped_frames,
            unused_frames=s.unused_frames, log_bytes=s.bytes, log_crc32c=s.log_crc,
        )
        atomic_write_json(s.path / EPISODE_FILE, s.meta)
        os.close(s.lock_fd)
        (s.path / LOCK_FILE).unlink(missing_ok=True)
        s.summary = {k: s.meta[k] for k in (
            "id", "status", "end_reason", "steps", "frames", "steps_handed", "dropped_steps",
            "dropped_frames", "unused_frames", "log_bytes", "duration_s")}
        s.done.set()
        log.info("episode %s %s: %d steps, %d frames (%s)", s.id, status, s.steps, s.frames,
                 s.meta["end_reason"])

