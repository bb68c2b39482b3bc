"""Export throughput against `cp` of the same bytes (issue 3 target: >= 50 % of cp).

Writes synthetic 640x480 episodes straight into the store format (no real-time recording), then
times `prepare_cloud_export` and `cp` of the export's own files, in the same run. Prints MB/s
and the ratio. Usage: python bench/record_store.py [--episodes 4] [--seconds 30]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import simplejpeg

from brain.durable import atomic_write_json
from brain.rlds import prepare_cloud_export
from brain.rlds.logformat import encode_frame, encode_step
from brain.rlds.store import EPISODE_FILE, FORMAT_VERSION, LOG_FILE, new_episode_id
from brain.rlds.synthetic import sample_images
from brain.rlds.tfrecord import write_record


def make_episode(root: Path, jpegs: list[bytes], seconds: float) -> None:
    eid = new_episode_id()
    d = root / eid
    d.mkdir(parents=True)
    t0 = time.monotonic()
    n_steps, n_frames, frame = round(seconds * 50), 0, -1
    with open(d / LOG_FILE, "wb") as fh:
        for i in range(n_steps):
            t = t0 + i / 50
            new = int((i + 1) * 30 / 50) > int(i * 30 / 50) or i == 0
            if new:
                write_record(fh, encode_frame(n_frames, t, (480, 640, 3),
                                              jpegs[n_frames % len(jpegs)]))
                frame, n_frames = n_frames, n_frames + 1
            write_record(fh, encode_step({
                "i": i, "t_mono": t, "t_wall": time.time(), "state": [0.1, 0.2, 0.3],
                "action": [0.0, 0.3], "reward": 1.0, "discount": 1.0, "is_terminal": False,
                "mode": "manual", "language_instruction": "", "frame": frame,
                "frame_skew_ms": 0.0 if new else 20.0, "frame_new": new}))
    atomic_write_json(d / EPISODE_FILE, {
        "format": FORMAT_VERSION, "id": eid, "status": "complete", "started_wall": time.time(),
        "ended_wall": time.time(), "metadata": {"state_names": ["a", "b", "c"]},
        "steps": n_steps, "frames": n_frames, "image_shape": [480, 640, 3]})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default=None, help="scratch dir (default: a temp dir)")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    jpegs = [simplejpeg.encode_jpeg(np.clip(img.astype(np.int16) + rng.integers(
        -12, 12, img.shape), 0, 255).astype(np.uint8), 75, colorsubsampling="420")
        for img in sample_images((480, 640, 3), 8)]
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        root = Path(tmp)
        for _ in range(a.episodes):
            make_episode(root / "episodes", jpegs, a.seconds)
        src = sum(p.stat().st_size for p in (root / "episodes").rglob("*") if p.is_file())
        t_exports, t_cps, t_syncs = [], [], []
        for r in range(a.repeat):  # interleaved runs; this machine is shared and noisy
            t = time.perf_counter()
            m = prepare_cloud_export(root / "episodes", root / f"export{r}")
            t_exports.append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run(["cp", "-r", str(root / f"export{r}"), str(root / "copy")],
                           check=True)
            t_cps.append(time.perf_counter() - t)
            # Durable baseline: the export fsyncs what it publishes, so also time cp + sync.
            shutil.rmtree(root / "copy")
            t = time.perf_counter()
            subprocess.run(["cp", "-r", str(root / f"export{r}"), str(root / "copy")],
                           check=True)
            subprocess.run(["sync", *map(str, (root / "copy").iterdir())], check=True)
            t_syncs.append(time.perf_counter() - t)
            shutil.rmtree(root / "copy")
            shutil.rmtree(root / f"export{r}")
        t_export, t_cp = statistics.median(t_exports), statistics.median(t_cps)
        t_sync = statistics.median(t_syncs)
        out = m["counts"]["bytes"]
        kb = np.mean([len(j) for j in jpegs]) / 1e3
        print(f"episodes {a.episodes} x {a.seconds:g} s, JPEG {kb:.0f} kB")
        print(f"source {src/1e6:.1f} MB, export {out/1e6:.1f} MB "
              f"(images expanded to one per step)")
        print(f"export: {t_export:.2f} s = {out/t_export/1e6:.0f} MB/s written "
              f"({src/t_export/1e6:.0f} MB/s of source), includes validation, sha256, fsync")
        print(f"cp of the export's bytes: {t_cp:.2f} s = {out/t_cp/1e6:.0f} MB/s (no fsync)")
        print(f"cp + sync of the same bytes: {t_sync:.2f} s = {out/t_sync/1e6:.0f} MB/s; "
              f"ratio export/(cp+sync): {t_sync/t_export:.2f}")
        print(f"ratio export/cp (medians of {a.repeat}): {t_cp/t_export:.2f} (target >= 0.50); "
              f"per run: {[round(c / e, 2) for c, e in zip(t_cps, t_exports, strict=True)]}")


if __name__ == "__main__":
    main()
