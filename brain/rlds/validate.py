"""Episode validation: schema, counts, timestamps, rate, frames, camera sync, log integrity.

Each episode gets `{"id", "status": "ok"|"incomplete"|"corrupt", "reasons": [...], ...stats}`.
"corrupt" means the data cannot be trusted (CRC, schema, order, references); "incomplete" means
the data is sound but the episode did not close normally or misses a field-plan gate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg

from brain.rlds.columns import StepColumns
from brain.rlds.schema import LOG_TYPES
from brain.rlds.store import Episode, EpisodeError, is_locked, list_episodes, load_episode

RATE_MIN_HZ = 20.0
RATE_MAX_HZ = 50.0
RATE_TOLERANCE = 0.01  # a 50 Hz loop measures 50.0x Hz over a short episode
SKEW_P99_MAX_MS = 5.0  # field plan: "timestamp skew <= 5 ms"
_META_KEYS: dict[str, type | tuple[type, ...]] = {
    "format": int, "id": str, "status": str, "started_wall": (int, float), "metadata": dict,
}


def validate_episode(episodes_dir: Path, episode_id: str, episode: Episode | None = None, *,
                     jpegs: bool = True) -> dict[str, Any]:
    """Validate one episode (pass `episode` when already loaded, to read it only once).

    `jpegs=False` leaves out check_jpegs(), the one check that depends on the image bytes, for
    a caller that runs it later itself (export, at the same time as it writes). That check can
    only find an episode corrupt, so the status it would leave otherwise is already final."""
    ep = episode if episode is not None else load_episode(episodes_dir, episode_id)
    corrupt: list[str] = []
    gates: list[str] = []
    meta = ep.meta
    for key, typ in _META_KEYS.items():
        if not isinstance(meta.get(key), typ):
            corrupt.append(f"episode.json: {key!r} missing or not {_tname(typ)}")
    status = meta.get("status")
    if status == "recording":
        if is_locked(ep.path):
            return {"id": ep.id, "status": "incomplete", "reasons": ["still recording"]}
        gates.append("never closed (run recovery)")
    elif status == "incomplete":
        gates.append(f"did not close normally: {meta.get('end_reason')}")
    elif status != "complete":
        corrupt.append(f"episode.json: unknown status {status!r}")
    if ep.log_error:
        corrupt.append(f"log: {ep.log_error}")
    steps, frames = ep.steps, ep.frames
    if status in ("complete", "incomplete") and not ep.log_error:
        if meta.get("steps") != len(steps):
            corrupt.append(f"step count {len(steps)} != {meta.get('steps')} in episode.json")
        if meta.get("frames") != len(frames):
            corrupt.append(f"frame count {len(frames)} != {meta.get('frames')} in episode.json")
    stats: dict[str, Any] = {"steps": len(steps), "frames": len(frames), "bytes": ep.log_size}
    corrupt += _check_steps(steps, len(frames), ep.columns)
    if not corrupt:
        stats.update(_timing(ep.columns, gates))
        if jpegs:
            corrupt += check_jpegs(meta, frames)
        stats.update(_sync(ep.columns, frames, gates))
    if not steps:
        gates.append("no steps")
    result = "corrupt" if corrupt else ("incomplete" if gates else "ok")
    return {"id": ep.id, "status": result, "reasons": corrupt + gates, **stats}


def validate_all(episodes_dir: Path) -> list[dict[str, Any]]:
    out = []
    for item in list_episodes(episodes_dir):
        try:
            out.append(validate_episode(episodes_dir, item["id"]))
        except EpisodeError as e:
            out.append({"id": item["id"], "status": "corrupt", "reasons": [str(e)]})
    return out


def _tname(typ: type | tuple[type, ...]) -> str:
    return "/".join(t.__name__ for t in typ) if isinstance(typ, tuple) else typ.__name__


def _check_steps(steps: list[dict[str, Any]], n_frames: int,
                 cols: StepColumns | None = None) -> list[str]:
    """Schema and order of the steps, checked on whole columns (per-step Python was most of
    validation's cost, itself a third of export's). Reports the first broken step, and its
    first broken key, like a step-by-step scan would."""
    cols = cols if cols is not None else StepColumns(steps)
    first_bad: dict[str, int] = {}
    for key, typ in LOG_TYPES.items():  # exact types: JSON gives a bool where an int is wrong
        allowed = _types(typ)
        values = cols.list(key)
        if not set(map(type, values)) <= set(allowed):
            first_bad[key] = next(n for n, v in enumerate(values) if type(v) not in allowed)
    if first_bad:
        n = min(first_bad.values())
        key = next(k for k in LOG_TYPES if first_bad.get(k) == n)
        return [f"step {n}: {key!r} missing or not {_tname(LOG_TYPES[key])}"]
    if not steps:
        return []
    count = len(steps)
    frame = cols.array("frame")
    t_mono = cols.array("t_mono", np.float64)
    state_lens = np.fromiter(map(len, cols.list("state")), np.int64, count)
    action_lens = np.fromiter(map(len, cols.list("action")), np.int64, count)
    prev_frame = np.concatenate(([-1], frame[:-1]))
    bad = {  # which steps fail each check, in the order a step-by-step scan tests them
        "index": cols.array("i") != np.arange(count),
        "action": action_lens != 2,
        "state": state_lens != state_lens[0],
        "t_mono": np.concatenate(([False], np.diff(t_mono) <= 0)),
        "frame": (frame >= n_frames) | (frame < -1) | (frame < prev_frame),
    }
    first = {k: int(np.argmax(v)) for k, v in bad.items() if v.any()}
    if first:
        kind = min(first, key=first.__getitem__)  # ties go to the check listed first
        n = first[kind]
        why = {
            "index": f"index {steps[n]['i']} out of sequence",
            "action": f"action has {action_lens[n]} values, expected 2",
            "state": f"state has {state_lens[n]} values, earlier steps {state_lens[0]}",
            "t_mono": "monotonic timestamp does not increase",
            "frame": f"frame reference {frame[n]} invalid ({n_frames} frames)",
        }[kind]
        return [f"step {n}: {why}"]
    back = np.flatnonzero(np.diff(cols.array("t_wall", np.float64)) < -0.5) + 1
    return [f"step {n}: wall-clock timestamp went back by more than 0.5 s" for n in back]


def _types(typ: type | tuple[type, ...]) -> tuple[type, ...]:
    return typ if isinstance(typ, tuple) else (typ,)


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else 0.0


def _timing(cols: StepColumns, gates: list[str]) -> dict[str, Any]:
    if len(cols) < 2:
        return {"rate_hz": None, "duration_s": 0.0}
    t = cols.array("t_mono", np.float64)
    duration = float(t[-1] - t[0])
    rate = (len(t) - 1) / duration
    if not RATE_MIN_HZ * (1 - RATE_TOLERANCE) <= rate <= RATE_MAX_HZ * (1 + RATE_TOLERANCE):
        gates.append(f"step rate {rate:.2f} Hz outside {RATE_MIN_HZ:g}-{RATE_MAX_HZ:g} Hz")
    dt = np.diff(t) * 1000.0
    return {"rate_hz": round(rate, 3), "duration_s": round(duration, 3),
            "step_interval_ms": {"p50": _pct(dt, 50), "p99": _pct(dt, 99),
                                 "max": float(dt.max())}}


def check_jpegs(meta: dict[str, Any], frames: list[Any]) -> list[str]:
    """Every frame's JPEG header must decode to its recorded shape (and the episode's);
    the first and last are decoded in full. The log CRC already vouches for the bytes."""
    shape = meta.get("image_shape")
    for n, fr in enumerate(frames):
        try:
            h, w, _cs, _sub = simplejpeg.decode_jpeg_header(fr.jpeg)
        except ValueError as e:
            return [f"frame {n}: JPEG header does not decode: {e}"]
        if (h, w) != tuple(fr.shape[:2]) or (shape and list(fr.shape) != list(shape)):
            return [f"frame {n}: JPEG is {h}x{w}, recorded shape {list(fr.shape)}, "
                    f"episode image_shape {shape}"]
    for n in {0, len(frames) - 1} if frames else ():
        try:
            img = simplejpeg.decode_jpeg(frames[n].jpeg, colorspace="RGB")
        except ValueError as e:
            return [f"frame {n}: JPEG does not decode: {e}"]
        if list(img.shape) != list(frames[n].shape):
            return [f"frame {n}: decodes to {list(img.shape)}, recorded {list(frames[n].shape)}"]
    return []


def _sync(cols: StepColumns, frames: list[Any], gates: list[str]) -> dict[str, Any]:
    if not frames or not len(cols):
        return {"skew_p99_ms": None}
    t_steps = cols.array("t_mono", np.float64)
    t_frames = np.array([f.t_capture for f in frames])
    # A frame captured before the episode's first tick was carried in from before the start;
    # no step of this episode could have been taken at its capture time, so it is not judged.
    carried = int(np.sum(t_frames < t_steps[0] - 1e-6))
    t_frames = t_frames[carried:]
    if not len(t_frames):
        return {"skew_p99_ms": None, "carried_in_frames": carried}
    # Per frame: distance from its capture time to the nearest step (the field-plan sync gate).
    idx = np.searchsorted(t_steps, t_frames)
    lo = np.clip(idx - 1, 0, len(t_steps) - 1)
    hi = np.clip(idx, 0, len(t_steps) - 1)
    near = np.minimum(np.abs(t_steps[lo] - t_frames), np.abs(t_steps[hi] - t_frames))
    skew = near * 1000.0
    framed = cols.array("frame") >= 0
    ages = np.array(cols.list("frame_skew_ms"), dtype=float)[framed]
    p99 = _pct(skew, 99)
    if p99 > SKEW_P99_MAX_MS:
        gates.append(f"frame-to-step skew p99 {p99:.2f} ms exceeds {SKEW_P99_MAX_MS:g} ms")
    no_frame = int(np.count_nonzero(~framed))
    return {
        "skew_p99_ms": round(p99, 3), "skew_max_ms": round(float(skew.max()), 3),
        "frame_age_ms": {"p50": _pct(ages, 50), "p99": _pct(ages, 99),
                         "max": float(ages.max()) if len(ages) else 0.0},
        "steps_without_frame": no_frame, "carried_in_frames": carried,
        "new_frame_steps": cols.list("frame_new").count(True),
    }
