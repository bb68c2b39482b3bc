"""Record a few synthetic episodes and export them (main venv, no TensorFlow); write what the
TensorFlow side must find into EXPECTED.json. Usage: make_export.py EXPORT_DIR EXPECTED.json"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from brain.hardware.robot import FrameSlot
from brain.rlds import Recorder, load_episode, prepare_cloud_export
from brain.rlds.synthetic import STATE_NAMES, run_ticks, sample_images

SHAPE = (120, 160, 3)


def main(out: Path, expected: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        slot, imgs = FrameSlot(), sample_images(SHAPE)
        rec = Recorder(root, slot, min_free_bytes=1 << 20)
        seq = run_ticks(rec, slot, 0.1, images=imgs)
        for _ in range(3):
            rec.start_episode({"state_names": list(STATE_NAMES), "operator": "tester"})
            seq = run_ticks(rec, slot, 0.8, images=imgs, seq_start=seq)
            rec.stop_episode()
        # Small shards so the reader has to stitch several together, written by two worker
        # processes (each names its own shards; the export numbers them in order).
        manifest = prepare_cloud_export(root, out, anonymize=True, shard_max_bytes=1,
                                        workers=2)
        episodes = {}
        for e in manifest["episodes"]:
            ep = load_episode(root, e["id"])
            episodes[e["id"]] = {"actions": [s["action"] for s in ep.steps],
                                 "states": [s["state"] for s in ep.steps]}
    expected.write_text(json.dumps({"image_shape": list(SHAPE), "episodes": episodes}))
    print(f"exported {len(episodes)} episodes in {manifest['counts']['shards']} shards to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
