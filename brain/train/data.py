"""Training data straight from the recorder's episode store (no export needed).

Each episode is judged first (`judge`): corrupt, invalid, too short, idle or skewed episodes are
left out and reported. From the rest, one sample per camera frame: the image at the model's
input size and the action applied at the tick that first used it. The split into training and
validation is by episode, so no frame of a validation episode is trained on.

Everything about the data's order is derived from its content, never from episode ids (which
hold the wall time and a random suffix), directory order or timestamps: the usable episodes are
ordered by a digest of what is trained on (`content_digest`: the actions and JPEG bytes of the
frames used), and the split, the training order and the rehearsal samples follow from that order
and the seed. The same episodes recorded twice under other ids give the same adapter, bit for
bit (tests/test_train.py).

Pre-processing: the runtime shrinks a camera frame to the model's input by area-averaging
(`brain.control.policy.downscale`: 640x480 -> 80x60 is three 2x2 halvings, i.e. the mean of
each 8x8 block). Recorded frames are JPEGs, and libjpeg-turbo can decode one straight to 1/8
scale from its DCT coefficients, whose DC term is that same 8x8 block mean: ~20x faster than a
full decode plus `downscale`. `decode_frame` takes that path when the scale is a power of two
and finishes with `downscale` otherwise; the closed-loop gate, which drives with the runtime's
own pre-processing, is what shows the difference does not matter (docs in brain/train/).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg

from brain.control.policy import downscale
from brain.rlds.store import EpisodeError, list_episodes, load_episode
from brain.rlds.validate import SKEW_P99_MAX_MS, validate_episode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Quality:
    """What an episode needs to be trained on (the config file's `quality` block)."""

    min_seconds: float = 3.0
    min_frames: int = 30
    min_mean_throttle: float = 0.05  # below: the car mostly stood still (idle)
    max_skew_ms: float = SKEW_P99_MAX_MS


@dataclass
class Samples:
    images: np.ndarray  # N x H x W x 3 uint8, the model's input size
    actions: np.ndarray  # N x 2 float32 (steering, throttle)
    places: list[str]  # per sample: where it was recorded (the simulator's track, or "robot")

    def __len__(self) -> int:
        return len(self.actions)


@dataclass
class Dataset:
    train: Samples
    val: Samples
    episodes: list[dict[str, Any]] = field(default_factory=list)  # verdict per episode
    train_ids: list[str] = field(default_factory=list)
    val_ids: list[str] = field(default_factory=list)
    places: list[str] = field(default_factory=list)  # where the used episodes were recorded
    # place -> how the simulator drives it again ({"track": name} or {"track_file": path});
    # places recorded on a real robot have none
    place_sources: dict[str, dict[str, str]] = field(default_factory=dict)
    simulator: dict[str, Any] | None = None  # the sim parameters, when simulated


def decode_frame(jpeg: bytes | memoryview, width: int, height: int) -> np.ndarray:
    """A recorded JPEG at the model's input size (see the module docstring)."""
    img = simplejpeg.decode_jpeg(bytes(jpeg), colorspace="RGB", min_width=width,
                                 min_height=height)
    if img.shape[0] != height or img.shape[1] != width:
        img = downscale(img, width, height).astype(np.uint8)
    return img


def quality_of(settings: Any) -> Quality:
    """The `quality` block of a TrainSettings as the judge takes it."""
    q = settings.quality
    return Quality(q.min_seconds, q.min_frames, q.min_mean_throttle, q.max_skew_ms)


def place_of(meta: dict[str, Any]) -> str:
    sim = meta.get("simulator") or {}
    return str(sim.get("track") or meta.get("robot_profile") or "robot")


def place_source(meta: dict[str, Any]) -> dict[str, str] | None:
    sim = meta.get("simulator") or {}
    if sim.get("track_file"):
        return {"track_file": str(sim["track_file"])}
    if sim.get("track"):
        return {"track": str(sim["track"])}
    return None


def judge(report: dict[str, Any], meta: dict[str, Any], actions: np.ndarray,
          quality: Quality) -> str | None:
    """Why an episode is left out, or None when it is good to train on."""
    if report["status"] == "corrupt":
        return f"corrupt: {'; '.join(report['reasons'])}"
    if not report.get("steps"):
        return "invalid: no steps"
    rate = report.get("rate_hz")
    if rate is None or not 19.8 <= rate <= 50.5:
        return f"invalid: step rate {rate} Hz"
    if report.get("duration_s", 0.0) < quality.min_seconds:
        return f"too short: {report.get('duration_s', 0):.1f} s"
    if report.get("frames", 0) < quality.min_frames:
        return f"too short: {report.get('frames', 0)} frames"
    skew = report.get("skew_p99_ms")
    if skew is not None and skew > quality.max_skew_ms:
        return f"skewed: frame-to-step skew p99 {skew:.1f} ms"
    if len(actions) and float(np.mean(np.abs(actions[:, 1]))) < quality.min_mean_throttle:
        return "idle: the car hardly moved"
    return None


def judge_episode(episodes_dir: Path, episode_id: str, quality: Quality
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """({"id", "used", "why", "frames", "digest"}, the episode's metadata): whether it is good
    to train on, and if not why (also what the continuous-learning trigger counts); a used
    episode's `digest` is its `content_digest`."""
    try:
        ep = load_episode(episodes_dir, episode_id)
        report = validate_episode(episodes_dir, episode_id, ep)
    except EpisodeError as e:
        return {"id": episode_id, "used": False, "why": f"corrupt: {e}", "frames": 0}, {}
    actions = _actions(ep) if not ep.log_error else np.zeros((0, 2), np.float32)
    meta = ep.meta.get("metadata", {})
    why = judge(report, meta, actions, quality)
    verdict = {"id": episode_id, "used": why is None, "why": why or "ok", "frames": len(actions)}
    if why is None:
        verdict["digest"] = content_digest(ep)
    return verdict, meta


def content_digest(ep: Any) -> str:
    """What orders an episode among the others: `digest_of` the frames it trains on."""
    new = _new_frames(ep)
    return digest_of(ep.columns.array("action", np.float32)[new],
                     (ep.frames[f].jpeg for f in ep.columns.array("frame")[new].tolist()))


def digest_of(actions: np.ndarray, jpegs: Iterable[bytes | memoryview]) -> str:
    """SHA-256 of what training takes from an episode: its (steering, throttle) per frame used
    and those frames' JPEG bytes, in step order; not its id, timestamps or metadata. The cloud
    companion orders an export's episodes by the same digest."""
    h = hashlib.sha256(np.ascontiguousarray(actions[:, :2], np.float32).tobytes())
    for jpeg in jpegs:
        h.update(jpeg)
    return h.hexdigest()


def load_dataset(episodes_dir: Path, width: int, height: int, *,
                 episode_ids: list[str] | None = None, val_fraction: float = 0.15,
                 quality: Quality | None = None) -> Dataset:
    """Judge every episode, then decode the good ones' frames straight into one array per
    split: no per-episode arrays to concatenate, so the peak memory is the data itself."""
    quality = quality or Quality()
    ids = episode_ids or [e["id"] for e in list_episodes(episodes_dir)]
    verdicts: list[dict[str, Any]] = []
    used: list[tuple[str, str, int, dict[str, Any]]] = []  # digest, id, frames, metadata
    for eid in sorted(ids):
        verdict, meta = judge_episode(episodes_dir, eid, quality)
        verdicts.append(verdict)
        if verdict["used"]:
            used.append((verdict["digest"], eid, verdict["frames"], meta))
    good = [(eid, n, meta) for _, eid, n, meta in sorted(used, key=lambda u: u[:2])]
    val_idx = validation_indices(len(good), val_fraction)
    train = [g for i, g in enumerate(good) if i not in val_idx]
    val = [g for i, g in enumerate(good) if i in val_idx]
    metas = [m for _, _, m in good]
    sim = next((m.get("simulator") for m in metas if m.get("simulator")), None)
    return Dataset(
        train=_decode_all(episodes_dir, train, width, height),
        val=_decode_all(episodes_dir, val, width, height),
        episodes=verdicts, train_ids=[e for e, _, _ in train], val_ids=[e for e, _, _ in val],
        places=sorted({place_of(m) for m in metas}), simulator=sim,
        place_sources={place_of(m): src for m in metas
                       if (src := place_source(m)) is not None})


def validation_indices(episodes: int, val_fraction: float) -> set[int]:
    """Which of `episodes` validate: every k-th of them in the order given (content order
    here: a choice that looks random but is the same for the same episodes), shared with the
    cloud companion's trainer."""
    if episodes < 2 or val_fraction <= 0:
        return set()
    n_val = max(1, round(episodes * val_fraction))
    return set(np.linspace(0, episodes - 1, n_val).round().astype(int).tolist())


def _new_frames(ep: Any) -> np.ndarray:
    """Indices of the steps that first used a frame."""
    return np.flatnonzero(np.asarray(ep.columns.list("frame_new"), dtype=bool))


def _actions(ep: Any) -> np.ndarray:
    return ep.columns.array("action", np.float32)[_new_frames(ep)].astype(np.float32)


def _decode_all(episodes_dir: Path, chosen: list[tuple[str, int, dict[str, Any]]], width: int,
                height: int) -> Samples:
    total = sum(n for _, n, _ in chosen)
    images = np.empty((total, height, width, 3), np.uint8)
    actions = np.empty((total, 2), np.float32)
    places: list[str] = []
    at = 0
    for eid, n, meta in chosen:
        ep = load_episode(episodes_dir, eid)
        new = _new_frames(ep)
        if len(new) != n:
            raise EpisodeError(f"episode {eid} changed while it was being read")
        frame_idx = ep.columns.array("frame")[new]
        actions[at:at + n] = ep.columns.array("action", np.float32)[new]
        for k, f in enumerate(frame_idx.tolist()):
            images[at + k] = decode_frame(ep.frames[f].jpeg, width, height)
        places += [place_of(meta)] * n
        at += n
        del ep
    return Samples(images, actions, places)
