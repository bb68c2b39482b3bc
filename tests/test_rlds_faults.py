"""Fault injection: a child process records synthetic 50 Hz steps and a 30 fps camera and is
SIGKILLed at random moments. After each kill we "restart" (run recovery) and check that every
episode the child saw finished is intact, and the open one lost at most the last second of what
the child handed to the recorder. Finally everything recorded exports."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from brain.rlds import list_episodes, prepare_cloud_export, recover, validate_episode

CHILD = r"""
import random, sys
from pathlib import Path
from brain.hardware.robot import FrameSlot
from brain.rlds import Recorder, recover
from brain.rlds.synthetic import run_ticks, sample_images
root = Path(sys.argv[1]); rnd = random.Random(int(sys.argv[2]))
recover(root)
slot, imgs = FrameSlot(), sample_images((32, 48, 3))
rec = Recorder(root, slot, min_free_bytes=1 << 20, fsync_interval_s=0.5)
seq = run_ticks(rec, slot, 0.05, images=imgs)
while True:
    eid = rec.start_episode({"state_names": ["a", "b", "c"]})
    print("START", eid, flush=True)
    tick = lambda i, s: print("HANDED", eid, i + 1, flush=True)
    seq = run_ticks(rec, slot, rnd.uniform(0.3, 0.9), images=imgs, seq_start=seq, on_tick=tick)
    rec.stop_episode()
    print("DONE", eid, flush=True)
"""

TRIALS = 20
RATE_HZ = 50


def test_sigkill_loses_nothing_acknowledged(tmp_path):
    root = tmp_path / "episodes"
    rnd = random.Random(1234)
    finished: set[str] = set()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for trial in range(TRIALS):
        out_path = tmp_path / f"child{trial}.out"
        with open(out_path, "w") as out:
            child = subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(trial)],
                                     stdout=out, env=env)
            time.sleep(rnd.uniform(0.6, 2.0))
            child.send_signal(signal.SIGKILL)
            child.wait()
        handed: dict[str, int] = {}
        done: set[str] = set()
        for line in out_path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "HANDED":
                handed[parts[1]] = int(parts[2])
            elif len(parts) == 2 and parts[0] == "DONE":
                done.add(parts[1])
        recover(root)  # what the daemon does on start-up
        for eid in done:
            rep = validate_episode(root, eid)
            assert rep["status"] == "ok", (trial, rep)
            assert rep["steps"] == handed[eid]
        for eid in set(handed) - done:  # the episode open at the kill
            rep = validate_episode(root, eid)
            assert rep["status"] in ("incomplete", "ok"), (trial, rep)
            assert handed[eid] - RATE_HZ <= rep["steps"] <= handed[eid], (trial, rep, handed)
        finished |= done
    statuses = {e["id"]: e["status"] for e in list_episodes(root)}
    assert finished and all(statuses[e] == "complete" for e in finished)
    manifest = prepare_cloud_export(root, tmp_path / "export")
    exported = {e["id"] for e in manifest["episodes"]}
    assert finished <= exported
