"""The on-device LoRA trainer as a user runs it: `brain train` and `brain eval` as processes
on episodes recorded by the real recorder (`brain collect --lockstep`), killed, interrupted
and starved of resources through a fake sysfs/procfs tree (the monitor reads files; nothing is
patched).

The adaptation figures per track (chicane, hairpin, a track file) and the promotion through OTA
on a running daemon are in tests/test_train_adapt.py.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import simplejpeg

from brain.control.model import SEED_MODEL_DIR
from brain.control.policy import downscale
from brain.rlds.store import list_episodes, load_episode
from brain.train.data import Quality, Samples, decode_frame, load_dataset
from brain.train.replay import balanced_indices, merge
from brain.train.resources import Level, ResourceMonitor
from brain.train.settings import SettingsError, load_settings
from tests import train_support
from tests.daemon_support import DaemonProcess
from tests.episode_factory import noisy_jpeg, write_episode
from tests.poll import wait_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
SMALL = {"max_steps": 300, "checkpoint_every": 50, "keep_checkpoints": 3, "log_every": 10,
         "val_fraction": 0.25}


def brain_env(state: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "BRAIN_STATE_DIR": str(state), "BRAIN_LOG_LEVEL": "warning",
            "PYTHONPATH": str(ROOT), **extra}


def brain(state: Path, *args: str, timeout: float = 300, **env: str
          ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "brain", *args], env=brain_env(state, **env),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


class Training:
    """`brain train --json` in the background, its events read line by line."""

    def __init__(self, state: Path, *args: str, **env: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "brain", "train", "--json", *args],
                                     env=brain_env(state, **env), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def wait_for(self, test, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self.events.empty():
                    break
                continue
            self.seen.append(event)
            if test(event):
                return event
        raise AssertionError(f"no such event within {timeout} s; rc {self.proc.poll()}; "
                             f"last events {self.seen[-5:]}; stderr {self.stderr()}")

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read()[-2000:]

    def finish(self, timeout: float = 120.0) -> int:
        rc = self.proc.wait(timeout=timeout)
        time.sleep(0.2)  # the reader thread drains the pipe
        while not self.events.empty():
            self.seen.append(self.events.get())
        return rc


def step_event(e: dict[str, Any]) -> bool:
    return "event" not in e and "loss" in e


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """Four 5 s teacher episodes on the chicane, through the real loop and recorder."""
    state = tmp_path_factory.mktemp("recorded") / "state"
    r = brain(state, *train_support.RECORD)
    assert r.returncode == 0, r.stderr
    return state


def copy_state(recorded: Path, tmp_path: Path, settings: dict[str, Any] | None = None
               ) -> tuple[Path, Path]:
    return train_support.copy_state(recorded, tmp_path, SMALL, settings)


def adapter_tensors(candidate: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(candidate / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def trained(recorded, tmp_path_factory) -> Path:
    """One uninterrupted run of SMALL (the reference for resume, and a candidate to inspect)."""
    state, config = copy_state(recorded, tmp_path_factory.mktemp("trained"))
    r = brain(state, "train", "--config", str(config), "--no-gate", "--json")
    assert r.returncode == 0, r.stderr
    return state


# -- configuration and data ----------------------------------------------------------------------

@pytest.mark.parametrize("doc, field", [
    ({"batch": 0}, "batch"), ({"shuffle": 3}, "shuffle"), ({"lr": -1}, "lr"),
    ({"lora": {"rank": 0}}, "lora.rank"), ({"lora": {"target_modules": ["conv9"]}},
                                           "lora.target_modules"),
    ({"replay": {"per_batch": "many"}}, "replay.per_batch"), ({"epochs": 3}, "epochs"),
    ({"gate": {"target_max_mean_cte": float("inf")}}, "gate.target_max_mean_cte"),
    ({"val_fraction": float("nan")}, "val_fraction"),
])
def test_a_bad_training_config_names_the_field(tmp_path: Path, doc: dict, field: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(SettingsError) as e:
        load_settings(path)
    assert str(path) in str(e.value) and field in str(e.value)


def test_the_shipped_config_is_the_field_plan_s(tmp_path: Path) -> None:
    s = load_settings(ROOT / "etc" / "train" / "pi5-donkey.json")
    assert (s.batch, s.max_steps, s.shuffle) == (8, 300, 2)
    for text, message in (("{", "not readable JSON"), ("[]", "(top)")):
        (tmp_path / "x.json").write_text(text)
        with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_settings(tmp_path / "x.json")
    with pytest.raises(SettingsError, match="no such training configuration"):
        load_settings(tmp_path / "missing.json")


def test_cli_refuses_a_bad_config_and_too_little_data(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"batch": "eight"}')
    r = brain(tmp_path / "state", "train", "--config", str(tmp_path / "bad.json"))
    assert r.returncode == 2 and "batch" in r.stderr
    assert not (tmp_path / "state" / "train" / "runs").exists()
    r = brain(tmp_path / "state", "train", "--config", str(ROOT / "etc/train/pi5-donkey.json"))
    assert r.returncode == 2 and "record more" in r.stderr, r.stderr


def test_episodes_are_judged_and_split_by_episode(recorded, tmp_path: Path) -> None:
    state, _ = copy_state(recorded, tmp_path)
    episodes = state / "rlds" / "episodes"
    jpeg = noisy_jpeg()
    write_episode(episodes, "20260101T000000Z-1d1e00", steps=400, jpeg=jpeg, throttle=0.0)
    write_episode(episodes, "20260101T000001Z-5407a0", steps=60, jpeg=jpeg)
    victim = list_episodes(episodes)[-1]["id"]
    log = episodes / victim / "steps.tfrecord"
    data = bytearray(log.read_bytes())
    data[len(data) // 2] ^= 0xFF
    log.write_bytes(bytes(data))
    ds = load_dataset(episodes, 80, 60, val_fraction=0.34, quality=Quality())
    why = {e["id"]: e["why"] for e in ds.episodes}
    assert why["20260101T000000Z-1d1e00"].startswith("idle")
    assert why["20260101T000001Z-5407a0"].startswith("too short")
    assert why[victim].startswith("corrupt")
    used = [e["id"] for e in ds.episodes if e["used"]]
    assert len(used) == 3 and victim not in used
    assert sorted(ds.train_ids + ds.val_ids) == sorted(used)
    assert not set(ds.train_ids) & set(ds.val_ids) and len(ds.val_ids) == 1
    assert ds.train.images.shape[1:] == (60, 80, 3) and ds.places == ["chicane"]
    assert ds.place_sources == {"chicane": {"track": "chicane"}}
    # One sample per frame: the action of the tick that first used it.
    ep = load_episode(episodes, ds.val_ids[0])
    assert len(ds.val) == len(ep.frames)


def test_the_fast_decode_is_the_runtime_pre_processing(recorded) -> None:
    """Training decodes JPEGs at 1/8 scale in the DCT; the runtime area-averages full frames.
    Both take the mean of each 8x8 block: they differ by JPEG rounding only."""
    episodes = recorded / "rlds" / "episodes"
    ep = load_episode(episodes, list_episodes(episodes)[0]["id"])
    diffs = []
    for frame in ep.frames[::20]:
        fast = decode_frame(frame.jpeg, 80, 60).astype(np.float32)
        full = simplejpeg.decode_jpeg(bytes(frame.jpeg), colorspace="RGB")
        runtime = downscale(full, 80, 60).astype(np.float32)
        diffs.append(np.abs(fast - runtime))
    d = np.stack(diffs)
    assert d.mean() < 1.5 and np.percentile(d, 99) < 8, (d.mean(), d.max())


def test_the_rehearsal_set_is_balanced_over_places() -> None:
    def samples(place: str, n: int) -> Samples:
        return Samples(np.full((n, 6, 8, 3), ord(place[0]), np.uint8),
                       np.zeros((n, 2), np.float32), [place] * n)

    old = Samples(*(np.concatenate(x) for x in zip(
        (samples("oval", 300).images, samples("oval", 300).actions),
        (samples("figure-s", 50).images, samples("figure-s", 50).actions), strict=True)),
        ["oval"] * 300 + ["figure-s"] * 50)
    out = merge(old, samples("chicane", 2000), 300, seed=0)
    counts = {p: out.places.count(p) for p in set(out.places)}
    assert counts == {"oval": 100, "figure-s": 50, "chicane": 100}
    assert all(img[0, 0, 0] == ord(p[0]) for img, p in zip(out.images, out.places, strict=True))
    assert merge(old, samples("chicane", 10), 300, seed=0).places == \
        merge(old, samples("chicane", 10), 300, seed=0).places


def test_rehearsal_draws_are_balanced_over_places_whatever_their_counts() -> None:
    places = ["oval"] * 300 + ["figure-s"] * 20 + ["chicane"] * 100
    rng = np.random.default_rng(0)
    drawn = [places[i] for step in range(300)
             for i in balanced_indices(places, 4, step, rng).tolist()]
    assert {p: drawn.count(p) for p in set(drawn)} == {"oval": 400, "figure-s": 400,
                                                       "chicane": 400}
    # The same step and generator state draw the same samples (what resume relies on).
    assert balanced_indices(places, 4, 7, np.random.default_rng(5)).tolist() == \
        balanced_indices(places, 4, 7, np.random.default_rng(5)).tolist()


def test_the_learning_goal_is_one_rule() -> None:
    """The thresholds the gate, the field plan, the tests and the bench share (Gate)."""
    gate = load_settings(ROOT / "etc" / "train" / "pi5-donkey.json").gate
    assert (gate.target_max_mean_cte, gate.keep_max_ratio) == (0.02, 1.10)

    def drive(cte: float, off: int = 0) -> dict[str, Any]:
        return {"mean_abs_cte": cte, "off_track_events": off}

    assert gate.target_ok(drive(0.02)) and not gate.target_ok(drive(0.0201))
    assert not gate.target_ok(drive(0.005, off=1))
    # Over 1 cm: the ratio alone.
    assert gate.kept_ok(drive(0.0131), drive(0.0120)) and \
        not gate.kept_ok(drive(0.0133), drive(0.0120))
    # Under 1 cm: +2 mm always allowed, though that is far over 1.10x.
    assert gate.kept_limit(0.004) == pytest.approx(0.006)
    assert gate.kept_ok(drive(0.0059), drive(0.004)) and \
        not gate.kept_ok(drive(0.0061), drive(0.004))
    assert not gate.kept_ok(drive(0.001, off=1), drive(0.004))


# -- the run and its outputs ---------------------------------------------------------------------

def test_a_run_writes_the_candidate_as_peft_and_the_field_plan_name_it(trained) -> None:
    import peft
    import torch
    from safetensors.torch import load_file

    from brain.train.model import PolicyNet

    cand = trained / "model" / "adapters" / "candidate"
    for name in ("adapter_model.safetensors", "adapter_config.json", "lora_adapters.pt",
                 "metrics.json", "model/policy.onnx", "model/policy.safetensors",
                 "model/policy.json", "model/replay.npz"):
        assert (cand / name).is_file(), name
    metrics = json.loads((cand / "metrics.json").read_text())
    losses = [h["loss"] for h in metrics["history"]]
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:3]) / 3, losses
    base = PolicyNet()
    base.load_state_dict(load_file(str(SEED_MODEL_DIR / "policy.safetensors")))
    adapted = peft.PeftModel.from_pretrained(base, str(cand)).merge_and_unload().eval()
    merged = PolicyNet()
    merged.load_state_dict(load_file(str(cand / "model" / "policy.safetensors")))
    x = torch.rand(4, 3, 60, 80)
    with torch.no_grad():
        assert torch.allclose(adapted(x), merged.eval()(x), atol=1e-5)
    spec = json.loads((cand / "model" / "policy.json").read_text())
    assert spec["id"].startswith("seed-v1+") and spec["training"]["places"] == ["chicane"]
    assert set(spec["training"]["replay_places"]) == {"oval", "rounded-square", "figure-s",
                                                      "chicane"}
    run = next((trained / "train" / "runs").iterdir())
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed" and record["worst_resource_level"] in (
        "NORMAL", "WARNING")
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == [f"step_{n:06d}.pt" for n in (150, 200, 250)]  # the last 3 kept


def test_sigkill_then_resume_ends_bit_for_bit_equal(recorded, trained, tmp_path: Path) -> None:
    state, config = copy_state(recorded, tmp_path)
    t = Training(state, "--config", str(config), "--no-gate")
    t.wait_for(lambda e: e.get("event") == "checkpoint" and e["step"] == 100)
    t.proc.send_signal(signal.SIGKILL)
    assert t.finish() == -signal.SIGKILL
    last = max(e["step"] for e in t.seen if step_event(e))
    assert last < 300, "the kill must land mid-run"
    r = brain(state, "train", "--resume", "--no-gate", "--json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    resumed = next(e for e in events if e.get("event") == "resumed_from")
    assert resumed["step"] == 100
    ours = adapter_tensors(state / "model" / "adapters" / "candidate")
    reference = adapter_tensors(trained / "model" / "adapters" / "candidate")
    assert ours.keys() == reference.keys()
    for key in ours:
        assert np.array_equal(ours[key], reference[key]), key
    hist = json.loads((state / "model/adapters/candidate/metrics.json").read_text())["history"]
    ref = json.loads((trained / "model/adapters/candidate/metrics.json").read_text())["history"]
    assert [(h["step"], h["loss"], h.get("val_loss")) for h in hist] == \
        [(h["step"], h["loss"], h.get("val_loss")) for h in ref]


@pytest.mark.xfail(strict=False, reason="passed in 3 fresh-clone runs and failed in a 4th "
                   "(conv1 lora_A differed): a timing-dependent difference in the lockstep "
                   "collection or training is suspected (issue 19 note); kept running, not "
                   "yet a gate")
def test_the_same_drive_under_other_ids_gives_the_same_adapter(recorded, trained,
                                                                tmp_path: Path) -> None:
    """The data's order comes from its content, not from episode ids: the same teacher drive
    recorded again (lockstep: the same frames and actions), its episodes renamed so that their
    ids sort the other way round, trains to the same adapter bit for bit."""
    state, config = copy_state(recorded, tmp_path)
    episodes = state / "rlds" / "episodes"
    shutil.rmtree(episodes)
    r = brain(state, *train_support.RECORD)
    assert r.returncode == 0, r.stderr
    again = [e["id"] for e in list_episodes(episodes)]
    assert not set(again) & {e["id"] for e in list_episodes(recorded / "rlds" / "episodes")}
    for k, eid in enumerate(again):  # the last recorded now sorts first
        renamed = f"renamed-{len(again) - k:02d}"
        (episodes / eid).rename(episodes / renamed)
        meta_file = episodes / renamed / "episode.json"
        meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "id": renamed}))
    r = brain(state, "train", "--config", str(config), "--no-gate", "--json")
    assert r.returncode == 0, r.stderr
    ours = adapter_tensors(state / "model" / "adapters" / "candidate")
    reference = adapter_tensors(trained / "model" / "adapters" / "candidate")
    assert ours.keys() == reference.keys()
    for key in ours:
        assert np.array_equal(ours[key], reference[key]), key


def test_sigterm_writes_an_emergency_checkpoint_and_exits_0(recorded, tmp_path: Path) -> None:
    state, config = copy_state(recorded, tmp_path, {"max_steps": 100000})
    t = Training(state, "--config", str(config), "--no-gate")
    t.wait_for(lambda e: step_event(e) and e["step"] >= 20)
    t.proc.send_signal(signal.SIGTERM)
    assert t.finish() == 0, t.stderr()
    done = next(e for e in t.seen if e.get("event") == "done")
    assert done["status"] == "interrupted" and "SIGTERM" in done["detail"]
    run = state / "train" / "runs" / done["run"]
    emergency = sorted((run / "checkpoints").glob("emergency_step_*.pt"))
    assert [p.name for p in emergency] == [f"emergency_step_{done['step']:06d}.pt"]
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    t = Training(state, "--resume", "--no-gate")
    resumed = t.wait_for(lambda e: e.get("event") == "resumed_from")
    assert resumed["step"] == done["step"] and resumed["checkpoint"] == emergency[0].name
    t.wait_for(lambda e: step_event(e) and e["step"] > done["step"])
    t.proc.send_signal(signal.SIGINT)
    assert t.finish() == 0


class _Payload:
    """A pickle that runs a command when it is loaded the old way (weights_only=False)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_a_planted_checkpoint_is_refused_not_run(recorded, tmp_path: Path) -> None:
    """Whoever can write a run's checkpoint directory must not get code run by `--resume`:
    checkpoints load as tensors and plain data only (brain.train.checkpoint)."""
    import torch

    state, config = copy_state(recorded, tmp_path, {"max_steps": 100000})
    t = Training(state, "--config", str(config), "--no-gate")
    t.wait_for(lambda e: step_event(e) and e["step"] >= 10)
    t.proc.send_signal(signal.SIGTERM)
    assert t.finish() == 0, t.stderr()
    run = next((state / "train" / "runs").iterdir())
    marker = tmp_path / "code-ran"
    torch.save({"step": 999_999, "lora": _Payload(marker)},
               run / "checkpoints" / "step_999999.pt")
    r = brain(state, "train", "--resume", "--no-gate", "--json")
    assert not marker.exists(), "loading the checkpoint ran its code"
    assert r.returncode != 0 and "step_999999.pt: refused" in r.stderr, (r.returncode,
                                                                         r.stderr[-2000:])


def test_an_unexpected_exit_leaves_a_checkpoint_through_atexit(recorded, tmp_path: Path) -> None:
    """A failure the trainer does not handle (here a progress consumer that raises) still
    leaves the run resumable: the atexit hook checkpoints before the interpreter exits."""
    state, config = copy_state(recorded, tmp_path)
    script = f"""
import sys
from pathlib import Path
from brain.train.settings import load_settings
from brain.train.trainer import RunPaths, Trainer
def progress(event):
    if event.get("step") == 30 and "loss" in event:
        raise RuntimeError("consumer failed")
t = Trainer(load_settings(Path({str(config)!r})), RunPaths(Path({str(state)!r}) / "run"),
            Path({str(SEED_MODEL_DIR)!r}), Path({str(state / "rlds" / "episodes")!r}),
            Path({str(state / "cand")!r}), on_progress=progress)
t.train()
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env=brain_env(state))
    assert r.returncode == 1 and "consumer failed" in r.stderr
    assert [p.name for p in (state / "run" / "checkpoints").glob("emergency_*")] == \
        ["emergency_step_000030.pt"]


# -- resources -----------------------------------------------------------------------------------

def fake_machine(root: Path, temp_c: float, mem_used_pct: float = 40.0) -> tuple[Path, Path]:
    sysfs, procfs = root / "sys", root / "proc"
    zone = sysfs / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "temp").write_text(f"{int(temp_c * 1000)}\n")
    procfs.mkdir(parents=True, exist_ok=True)
    total = 8_000_000
    (procfs / "meminfo").write_text(f"MemTotal: {total} kB\nMemFree: 1000 kB\n"
                                    f"MemAvailable: {int(total * (1 - mem_used_pct / 100))} kB\n")
    return sysfs, procfs


def test_the_monitor_grades_every_source(tmp_path: Path) -> None:
    sysfs, procfs = fake_machine(tmp_path, 50)
    vcgencmd = tmp_path / "vcgencmd"
    vcgencmd.write_text("#!/bin/sh\ncat \"$(dirname \"$0\")/throttled\"\n")
    vcgencmd.chmod(0o755)
    (tmp_path / "throttled").write_text("throttled=0x0\n")
    mode = {"now": "idle"}
    m = ResourceMonitor(tmp_path, sysfs_root=sysfs, procfs_root=procfs,
                        daemon_mode=lambda: mode["now"], vcgencmd=str(vcgencmd))
    assert m.sample().level == Level.NORMAL
    cases = [((72, 40), "0x0", "idle", Level.WARNING), ((81, 40), "0x0", "idle", Level.CRITICAL),
             ((86, 40), "0x0", "idle", Level.EMERGENCY), ((50, 91), "0x0", "idle",
                                                          Level.CRITICAL),
             ((50, 96), "0x0", "idle", Level.EMERGENCY), ((50, 40), "0x4", "idle",
                                                          Level.CRITICAL),
             ((50, 40), "0x1", "idle", Level.EMERGENCY), ((50, 40), "0x8", "idle",
                                                          Level.WARNING),
             ((50, 40), "0x50000", "idle", Level.NORMAL),  # throttled *since boot*: history
             ((50, 40), "0x0", "manual", Level.CRITICAL),
             ((50, 40), "0x0", "autonomous_driving", Level.CRITICAL),
             ((50, 40), "0x0", "autonomous_armed", Level.NORMAL)]
    for (temp, mem), bits, now, level in cases:
        fake_machine(tmp_path, temp, mem)
        (tmp_path / "throttled").write_text(f"throttled={bits}\n")
        mode["now"] = now
        r = m.sample()
        assert r.level == level, (temp, mem, bits, now, r.reasons)
    assert m.worst == Level.EMERGENCY
    allowed = ResourceMonitor(tmp_path, sysfs_root=sysfs, procfs_root=procfs,
                              daemon_mode=lambda: "manual", train_while_driving=True,
                              vcgencmd="")
    fake_machine(tmp_path, 50)
    assert allowed.sample().level == Level.NORMAL
    # Unreadable sources count as unknown, not as alarms.
    (sysfs / "class" / "thermal" / "thermal_zone0" / "temp").write_text("garbage")
    (procfs / "meminfo").write_text("")
    assert allowed.sample().values["cpu_temp_c"] is None


def test_critical_pauses_and_emergency_stops_the_run(recorded, tmp_path: Path) -> None:
    state, config = copy_state(recorded, tmp_path, {"max_steps": 100000,
                                                    "checkpoint_every": 100000})
    sysfs, procfs = fake_machine(tmp_path / "machine", 50)
    t = Training(state, "--config", str(config), "--no-gate",
                 BRAIN_TRAIN_SYSFS_ROOT=str(sysfs), BRAIN_TRAIN_PROCFS_ROOT=str(procfs))
    t.wait_for(step_event)
    fake_machine(tmp_path / "machine", 82)
    paused = t.wait_for(lambda e: e.get("event") == "paused", timeout=10)
    assert "CRITICAL: CPU 82.0 C" in paused["reasons"]
    assert any(e.get("event") == "checkpoint" and e["step"] == paused["step"] for e in t.seen)
    time.sleep(4.0)
    while not t.events.empty():
        e = t.events.get()
        t.seen.append(e)
        assert not step_event(e), "no step while paused"
    fake_machine(tmp_path / "machine", 60)
    t.wait_for(lambda e: e.get("event") == "resumed", timeout=10)
    t.wait_for(lambda e: step_event(e) and e["step"] > paused["step"])
    fake_machine(tmp_path / "machine", 50, mem_used_pct=97)
    stop = t.wait_for(lambda e: e.get("event") == "emergency", timeout=10)
    assert t.finish(timeout=30) == 3
    assert "EMERGENCY: memory 97 % used" in stop["reasons"]
    run = state / "train" / "runs" / next(e for e in t.seen if e.get("event") == "run")["run"]
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "stopped" and record["worst_resource_level"] == "EMERGENCY"
    assert (run / "checkpoints" / f"step_{stop['step']:06d}.pt").is_file()


def test_the_trainer_waits_while_the_daemon_drives(recorded, tmp_path: Path) -> None:
    """The robot's mode over the real control socket: MANUAL pauses the run, IDLE resumes."""
    state, config = copy_state(recorded, tmp_path, {"max_steps": 100000,
                                                    "checkpoint_every": 100000})
    sysfs, procfs = fake_machine(tmp_path / "machine", 50)
    d = DaemonProcess(state)
    try:
        d.wait_ready()
        d.cli("mode", "manual")
        t = Training(state, "--config", str(config), "--no-gate",
                     BRAIN_TRAIN_SYSFS_ROOT=str(sysfs), BRAIN_TRAIN_PROCFS_ROOT=str(procfs))
        paused = t.wait_for(lambda e: e.get("event") == "paused")
        assert "CRITICAL: robot is driving (manual)" in paused["reasons"]
        d.cli("mode", "idle")
        t.wait_for(lambda e: e.get("event") == "resumed", timeout=10)
        t.wait_for(step_event)
        t.proc.send_signal(signal.SIGTERM)
        assert t.finish() == 0
    finally:
        d.stop()


# -- brain eval -----------------------------------------------------------------------------------

def test_eval_drives_a_directory_an_adapter_a_bundle_and_the_active_model(
        trained, tmp_path: Path) -> None:
    cand = trained / "model" / "adapters" / "candidate"
    r = brain(trained, "eval", "--model", str(SEED_MODEL_DIR), "--track", "oval",
              "--track", "chicane", "--seconds", "10", "--json")
    assert r.returncode == 0, r.stderr
    oval, chicane = (json.loads(line) for line in r.stdout.splitlines())
    assert oval["track"] == "oval" and oval["off_track_events"] == 0
    assert chicane["off_track_events"] == 1, "the seed leaves the chicane"
    r = brain(trained, "eval", "--model", str(SEED_MODEL_DIR), "--adapter", str(cand),
              "--track", "chicane", "--seconds", "10", "--json")
    assert r.returncode == 0, r.stderr
    adapted = json.loads(r.stdout)
    assert adapted["mean_abs_cte"] < chicane["mean_abs_cte"] / 10
    # The adapter merged here and the merged model the trainer wrote drive identically.
    r = brain(trained, "eval", "--model", str(cand / "model"), "--track", "chicane",
              "--seconds", "10", "--json")
    assert json.loads(r.stdout)["mean_abs_cte"] == pytest.approx(adapted["mean_abs_cte"],
                                                                  abs=1e-4)
    # A signed bundle: refused untrusted, driven once its key is given.
    keys = tmp_path / "keys"
    assert brain(trained, "bundle", "keygen", "--out", str(keys)).returncode == 0
    bundle = tmp_path / "c.bundle"
    r = brain(trained, "bundle", "build", str(cand / "model"), "--key",
              str(keys / "publisher.key"), "--version", "1.0.0", "--release", "1",
              "--out", str(bundle))
    assert r.returncode == 0, r.stderr
    r = brain(trained, "eval", "--model", str(bundle), "--track", "chicane", "--seconds", "10")
    assert r.returncode == 2 and "refused" in r.stderr
    r = brain(trained, "eval", "--model", str(bundle), "--keys", str(keys), "--track",
              "chicane", "--seconds", "10", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["mean_abs_cte"] == pytest.approx(adapted["mean_abs_cte"],
                                                                  abs=1e-4)
    # `active` with no bundle ever installed: the seed.
    r = brain(tmp_path / "empty", "eval", "--model", "active", "--track", "oval",
              "--seconds", "10", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["model"] == "seed-v1", r.stderr
    for args, message in ((["--model", str(tmp_path / "nope")], "no such model"),
                          (["--model", str(SEED_MODEL_DIR), "--adapter", str(tmp_path)],
                           "not a peft adapter"),
                          (["--model", str(SEED_MODEL_DIR), "--seconds", "0"], "seconds")):
        r = brain(trained, "eval", *args, "--track", "oval")
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)


def test_the_daemon_never_imports_torch(trained) -> None:
    d = DaemonProcess(trained)
    try:
        d.wait_ready()
        maps = Path(f"/proc/{d.proc.pid}/maps").read_text()
        assert "libtorch" not in maps and "peft" not in maps
    finally:
        d.stop()
    wait_until(lambda: d.proc.poll(), lambda rc: rc is not None, timeout=5, what="exit")
