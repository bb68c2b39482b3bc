"""Read an export with real TensorFlow + TFDS and compare with what was recorded.
Runs in the interop venv (tensorflow-cpu, tensorflow-datasets). Usage:
check_tfds.py EXPORT_DIR EXPECTED.json; exit 0 when every episode matches."""

from __future__ import annotations

import json
import sys

import numpy as np
import tensorflow_datasets as tfds


def main(export_dir: str, expected_path: str) -> int:
    with open(expected_path) as fh:
        expected = json.load(fh)
    builder = tfds.builder_from_directory(export_dir)
    ds = builder.as_dataset(split="train")
    seen = set()
    for episode in tfds.as_numpy(ds):
        eid = episode["episode_metadata"]["episode_id"].decode()
        want = expected["episodes"][eid]
        steps = list(episode["steps"])  # a nested tf.data.Dataset, one element per step
        assert len(steps) == len(want["actions"]), (eid, len(steps), len(want["actions"]))
        for i, step in enumerate(steps):
            img = step["observation"]["image"]
            assert list(img.shape) == expected["image_shape"], (eid, i, img.shape)
            assert img.dtype == np.uint8
            np.testing.assert_array_equal(step["action"], np.float32(want["actions"][i]))
            np.testing.assert_array_equal(step["observation"]["state"],
                                          np.float32(want["states"][i]))
            assert bool(step["is_first"]) == (i == 0) and bool(step["is_last"]) == (
                i == len(steps) - 1)
        seen.add(eid)
    missing = set(expected["episodes"]) - seen
    assert not missing, f"episodes missing from the dataset: {sorted(missing)}"
    print(f"interop ok: {len(seen)} episodes read by TFDS {tfds.__version__} with TensorFlow")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
