"""The rehearsal set that travels with a model: a few hundred (image, action) samples from every
place the robot must keep driving, mixed into every training batch so that adapting to a new
place does not unlearn the old ones.

Measured (brain/train/README.md, bench/train.py): LoRA on chicane alone (300 x 8) drove the
chicane but took rounded-square off the road; with a few of every 8 samples (4 now) from a
~512-frame set drawn from the tracks the seed drives, every one of them kept its line
(docs/training.md, "The learning goal", for today's figures). A set only helps for the
places it holds, so each candidate writes a new set: the old one plus samples from the places it
was trained on, balanced per place, at most `size` samples.

In every batch the rehearsal samples are spread evenly over the set's places
(`balanced_indices`), whatever each place's count in the set.

File: `replay.npz` in the model directory (named by `policy.json`'s `replay`): `jpeg` (the
images as JPEGs at the model's input size, concatenated), `offsets` (N + 1), `actions` (N x 2
float32) and `places` (N strings). JPEG keeps it ~1 MB; it decodes like recorded frames.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import simplejpeg

from brain.train.data import Samples

REPLAY_FILE = "replay.npz"
QUALITY = 90


def save(path: Path, samples: Samples) -> None:
    blobs = [simplejpeg.encode_jpeg(np.ascontiguousarray(img), QUALITY, colorspace="RGB",
                                    colorsubsampling="444") for img in samples.images]
    offsets = np.zeros(len(blobs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    buf = io.BytesIO()
    np.savez(buf, jpeg=np.frombuffer(b"".join(blobs), np.uint8), offsets=offsets,
             actions=samples.actions.astype(np.float32),
             places=np.asarray(samples.places, dtype=str))
    path.write_bytes(buf.getvalue())


def load(path: Path) -> Samples:
    with np.load(path, allow_pickle=False) as z:
        jpeg, offsets = z["jpeg"].tobytes(), z["offsets"]
        actions, places = z["actions"].astype(np.float32), [str(p) for p in z["places"]]
    images = np.stack([simplejpeg.decode_jpeg(jpeg[offsets[i]:offsets[i + 1]], colorspace="RGB")
                       for i in range(len(actions))]) if len(actions) else \
        np.zeros((0, 1, 1, 3), np.uint8)
    return Samples(images, actions, places)


def merge(old: Samples | None, new: Samples, size: int, seed: int = 0) -> Samples:
    """At most `size` samples, as evenly as possible over every place in `old` and `new`.
    Gathers only the chosen samples (never a copy of the whole training set)."""
    parts = [p for p in (old, new) if p is not None and len(p)]
    refs = [(k, i, place) for k, p in enumerate(parts) for i, place in enumerate(p.places)]
    rng = np.random.default_rng(seed)
    places = sorted({place for _, _, place in refs})
    share = max(1, size // max(1, len(places)))
    chosen: list[tuple[int, int, str]] = []
    for place in places:
        here = [r for r in refs if r[2] == place]
        pick = rng.choice(len(here), size=min(share, len(here)), replace=False)
        chosen += [here[j] for j in sorted(pick.tolist())]
    if not chosen:
        return new
    return Samples(np.stack([parts[k].images[i] for k, i, _ in chosen]),
                   np.stack([parts[k].actions[i] for k, i, _ in chosen]).astype(np.float32),
                   [place for _, _, place in chosen])


def balanced_indices(places: list[str], k: int, step: int, rng: np.random.Generator
                     ) -> np.ndarray:
    """`k` rehearsal samples for training step `step`: the places in turn (round robin over
    the steps, so each gets the same share whatever its count in the set), a random sample
    within each. Derived from the step and `rng` only, so a resumed run draws the same."""
    names = sorted(set(places))
    where = np.asarray(places)
    by_place = [np.flatnonzero(where == name) for name in names]
    out = np.empty(k, np.int64)
    for j in range(k):
        pool = by_place[(step * k + j) % len(by_place)]
        out[j] = pool[rng.integers(len(pool))]
    return out
