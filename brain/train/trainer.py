"""The on-device LoRA trainer: adapts the active policy to the robot's own episodes.

Always its own process (`brain train`, or the job worker), never the daemon: it imports torch
and peft. It reads the episode store and the active bundle, and writes only its run directory
(`<state>/train/runs/<run>/`: run.json, checkpoints) and the candidate
(`<state>/model/adapters/candidate/`).

Bit-for-bit resume: a checkpoint holds the adapter, optimizer and scheduler states, every random
generator (torch, numpy's data-order and rehearsal generators, Python's), the data order and the
position in it, the step and the metric history. With the thread count pinned and torch's
deterministic algorithms on, a run killed (SIGKILL) and resumed ends with the same weights as an
uninterrupted one (tests/test_train.py). SIGTERM and SIGINT write `emergency_step_<N>.pt` and exit
0; an `atexit` hook does the same for any other exit that leaves the run unfinished.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brain.durable import atomic_write_json, fsync_dir
from brain.procs import lower_priority
from brain.train import checkpoint
from brain.train import replay as replay_set
from brain.train.data import Dataset, Samples, load_dataset, quality_of
from brain.train.model import ARCH, PolicyNet
from brain.train.resources import Level, ResourceMonitor
from brain.train.settings import TrainSettings

log = logging.getLogger(__name__)

TRAIN_NICE = 19
CHECK_RESOURCES_S = 1.0
PAUSE_POLL_S = 2.0
VAL_CHUNK = 64  # frames per forward pass for the validation loss: activations stay ~10 MB


class TrainError(RuntimeError):
    """The run cannot start or go on; the message says why."""


@dataclass
class RunPaths:
    root: Path  # <state>/train/runs/<run-id>

    @property
    def run_file(self) -> Path:
        return self.root / "run.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        found = []
        for p in self.checkpoints.glob("*step_*.pt"):
            try:
                found.append((int(p.stem.rsplit("_", 1)[1]), p.name.startswith("emergency"), p))
            except ValueError:
                continue
        return max(found)[2] if found else None


@dataclass
class Outcome:
    status: str  # completed, stopped (EMERGENCY), interrupted (signal)
    step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    candidate: Path | None = None
    detail: str = ""


class Trainer:
    def __init__(self, settings: TrainSettings, run: RunPaths, base_dir: Path,
                 episodes_dir: Path, candidate_dir: Path, *,
                 monitor: ResourceMonitor | None = None, episode_ids: list[str] | None = None,
                 on_progress: Callable[[dict[str, Any]], None] | None = None,
                 avoid_cpu: int = -1) -> None:
        self.s = settings
        self.run = run
        self.base_dir = base_dir
        self.episodes_dir = episodes_dir
        self.candidate_dir = candidate_dir
        self.monitor = monitor
        self.episode_ids = episode_ids
        self.on_progress = on_progress or (lambda _event: None)
        self.avoid_cpu = avoid_cpu
        self._signal: str | None = None
        self._state: dict[str, Any] | None = None  # what a checkpoint needs, once training runs
        self._finished = False
        self.validation: Samples | None = None  # the held-out frames, for the gate

    # -- process set-up ----------------------------------------------------------------------------
    def _settle_process(self) -> None:
        """Lowest priority, a pinned thread count, away from the control loop's CPU."""
        lower_priority(TRAIN_NICE)
        torch.set_num_threads(self.s.threads)
        torch.use_deterministic_algorithms(True)
        if self.avoid_cpu >= 0 and hasattr(os, "sched_getaffinity"):
            cpus = os.sched_getaffinity(0) - {self.avoid_cpu}
            if cpus:
                os.sched_setaffinity(0, cpus)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        atexit.register(self._at_exit)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signal = signal.Signals(signum).name

    def _at_exit(self) -> None:
        if not self._finished and self._state is not None:
            self._checkpoint(self._state["step"], emergency=True)

    # -- the run -----------------------------------------------------------------------------------
    def prepare(self, resume: bool) -> tuple[dict[str, Any], Dataset]:
        """The run's record (new, or the one to resume) and its data."""
        from brain.control.model import load_spec

        if resume:
            if not self.run.run_file.exists():
                raise TrainError(f"nothing to resume in {self.run.root}")
            record = json.loads(self.run.run_file.read_text())
            self.s = TrainSettings.model_validate(record["settings"])
            ids = record["train_ids"] + record["val_ids"]
        else:
            record, ids = {}, self.episode_ids
        spec = load_spec(self.base_dir)
        if spec.extra.get("arch") != ARCH or not spec.weights:
            raise TrainError(f"{self.base_dir}: the active model is not a {ARCH} with weights; "
                             "it cannot be adapted here")
        t0 = time.monotonic()
        data = load_dataset(self.episodes_dir, spec.input_width, spec.input_height,
                            episode_ids=ids, val_fraction=self.s.val_fraction,
                            quality=quality_of(self.s))
        self.validation = data.val
        self.on_progress({"event": "data", "episodes": len(data.episodes),
                          "used": sum(e["used"] for e in data.episodes),
                          "train_frames": len(data.train), "val_frames": len(data.val),
                          "places": data.places, "load_s": round(time.monotonic() - t0, 2),
                          "left_out": [e for e in data.episodes if not e["used"]]})
        if resume and (data.train_ids != record["train_ids"] or
                       data.val_ids != record["val_ids"]):
            raise TrainError("the episodes of the run to resume changed or were deleted")
        if len(data.train) < self.s.batch:
            used = [e for e in data.episodes if e["used"]]
            raise TrainError(f"only {len(data.train)} training frames from {len(used)} usable "
                             f"episodes (of {len(data.episodes)}); record more")
        if not resume:
            record = {"run_id": self.run.root.name, "created": time.time(),
                      "base": str(self.base_dir), "base_id": spec.id,
                      "settings": self.s.model_dump(mode="json"),
                      "train_ids": data.train_ids, "val_ids": data.val_ids,
                      "places": data.places, "place_sources": data.place_sources,
                      "simulator": data.simulator,
                      "episodes": data.episodes, "status": "running"}
            self.run.checkpoints.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.run.run_file, record)
        return record, data

    def train(self, resume: bool = False) -> Outcome:
        self._settle_process()
        record, data = self.prepare(resume)
        s = self.s
        import peft

        torch.manual_seed(s.seed)
        base = load_base(self.base_dir)
        rehearsal = load_replay(self.base_dir)
        model = peft.get_peft_model(base, peft.LoraConfig(
            r=s.lora.rank, lora_alpha=s.lora.alpha, lora_dropout=s.lora.dropout,
            target_modules=list(s.lora.target_modules)))
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=s.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, CosineDecay(s.max_steps))
        order_rng, replay_rng = np.random.default_rng(s.seed), np.random.default_rng(s.seed + 1)
        random.seed(s.seed)
        n = len(data.train)
        order, pos, passes = new_order(s.shuffle, n, order_rng, None), 0, 0
        step, history, losses = 0, [], []
        latest = self.run.latest_checkpoint() if resume else None
        if latest is not None:
            try:
                ck = checkpoint.load(latest)
            except checkpoint.CheckpointError as e:
                raise TrainError(str(e)) from None
            peft.set_peft_model_state_dict(model, ck["lora"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            torch.set_rng_state(ck["torch_rng"])
            order_rng.bit_generator.state = ck["order_rng"]
            replay_rng.bit_generator.state = ck["replay_rng"]
            random.setstate(ck["python_random"])
            order, pos, passes = np.asarray(ck["order"]), ck["pos"], ck["passes"]
            step, history, losses = ck["step"], ck["history"], ck["losses"]
            log.info("resumed from %s (step %d)", latest.name, step)
            self.on_progress({"event": "resumed_from", "checkpoint": latest.name, "step": step})
        # N x H x W x 3 as decoded (no copy of the data set); each batch is made N x 3 x H x W.
        images = torch.from_numpy(data.train.images)
        actions = torch.from_numpy(data.train.actions)
        r_images = torch.from_numpy(rehearsal.images) \
            if rehearsal is not None and len(rehearsal) else None
        r_actions = torch.from_numpy(rehearsal.actions) \
            if rehearsal is not None and r_images is not None else None
        weights = torch.tensor(s.loss_weights, dtype=torch.float32)
        k_replay = s.replay.per_batch if r_images is not None else 0
        k_new = s.batch - k_replay
        if k_new < 1:
            raise TrainError(f"replay.per_batch {k_replay} leaves no room in batch {s.batch}")
        val = val_tensors(data.val)
        model.train()
        x = y = None
        t_start, step0, last_check = time.monotonic(), step, 0.0
        self._state = {"step": step, "model": model, "opt": opt, "sched": sched,
                       "order_rng": order_rng, "replay_rng": replay_rng, "order": order,
                       "pos": pos, "passes": passes, "history": history, "losses": losses}
        while step < s.max_steps:
            if self._signal:
                self._checkpoint(step, emergency=True)
                return self._finish(record, "interrupted", step, history,
                                    f"{self._signal}: emergency checkpoint at step {step}")
            if self.monitor is not None and time.monotonic() - last_check >= CHECK_RESOURCES_S:
                last_check = time.monotonic()
                verdict = self._mind_resources(step)
                if verdict is not None:
                    return self._finish(record, "stopped", step, history, verdict)
            if pos + k_new > n:
                passes += 1
                order, pos = new_order(s.shuffle, n, order_rng, order), 0
            idx = torch.from_numpy(order[pos:pos + k_new])
            pos += k_new
            x, y = images[idx], actions[idx]
            if k_replay:
                assert rehearsal is not None and r_images is not None and r_actions is not None
                j = torch.from_numpy(replay_set.balanced_indices(rehearsal.places, k_replay,
                                                                 step, replay_rng))
                x, y = torch.cat([x, r_images[j]]), torch.cat([y, r_actions[j]])
            x = x.permute(0, 3, 1, 2).contiguous()
            loss = (((model(x.float() / 255.0) - y) ** 2) * weights).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(float(loss.item()))
            self._state.update(step=step, order=order, pos=pos, passes=passes)
            if step % s.log_every == 0 or step == s.max_steps:
                elapsed = time.monotonic() - t_start
                rate = (step - step0) / elapsed if elapsed > 0 else 0.0
                event = {"step": step, "max_steps": s.max_steps,
                         "loss": round(float(np.mean(losses)), 6),
                         "lr": round(float(sched.get_last_lr()[0]), 8),
                         "steps_per_s": round(rate, 3),
                         "eta_s": round((s.max_steps - step) / rate, 1) if rate else None}
                if step % s.checkpoint_every == 0 or step == s.max_steps:
                    event["val_loss"] = val_loss(model, val, weights)
                    model.train()
                history.append(event)
                losses.clear()
                self.on_progress(event)
            if step % s.checkpoint_every == 0 and step < s.max_steps:
                self._checkpoint(step)
        # The rehearsal set for the candidate, then the training frames go before the export
        # (whose own peak would otherwise come on top of them: bench/train.py, peak RSS).
        new_replay = replay_set.merge(rehearsal, data.train, s.replay.size, seed=s.seed)
        counts = {"train_frames": len(data.train), "val_frames": len(data.val),
                  "replay_frames": len(rehearsal or [])}
        del data, images, actions, x, y
        candidate = self._write_candidate(model, new_replay, counts, record, history)
        return self._finish(record, "completed", step, history, "", candidate)

    # -- resources ---------------------------------------------------------------------------------
    def _mind_resources(self, step: int) -> str | None:
        """None to go on; a reason to stop (EMERGENCY). CRITICAL pauses here until it clears."""
        assert self.monitor is not None
        r = self.monitor.sample()
        if r.level == Level.EMERGENCY:
            self._checkpoint(step)
            self.on_progress({"event": "emergency", "step": step, "reasons": r.reasons})
            return "; ".join(r.reasons)
        if r.level < Level.CRITICAL:
            return None
        self._checkpoint(step)
        self.on_progress({"event": "paused", "step": step, "reasons": r.reasons})
        while r.level == Level.CRITICAL and not self._signal:
            time.sleep(PAUSE_POLL_S)
            r = self.monitor.sample()
        if r.level == Level.EMERGENCY:
            self.on_progress({"event": "emergency", "step": step, "reasons": r.reasons})
            return "; ".join(r.reasons)
        self.on_progress({"event": "resumed", "step": step})
        return None

    # -- checkpoints -------------------------------------------------------------------------------
    def _checkpoint(self, step: int, emergency: bool = False) -> Path | None:
        import peft

        st = self._state
        if st is None:
            return None
        name = f"emergency_step_{step:06d}.pt" if emergency else f"step_{step:06d}.pt"
        path = self.run.checkpoints / name
        checkpoint.save(path, {
            "step": step, "lora": peft.get_peft_model_state_dict(st["model"]),
            "optimizer": st["opt"].state_dict(), "scheduler": st["sched"].state_dict(),
            "torch_rng": torch.get_rng_state(),
            "order_rng": st["order_rng"].bit_generator.state,
            "replay_rng": st["replay_rng"].bit_generator.state,
            "python_random": random.getstate(), "order": st["order"], "pos": st["pos"],
            "passes": st["passes"], "history": st["history"], "losses": list(st["losses"]),
            "settings": self.s.model_dump(mode="json")})
        if not emergency:
            kept = sorted(self.run.checkpoints.glob("step_*.pt"))
            for old in kept[:-self.s.keep_checkpoints]:
                old.unlink(missing_ok=True)
        self.on_progress({"event": "checkpoint", "step": step, "path": str(path)})
        return path

    def _finish(self, record: dict[str, Any], status: str, step: int,
                history: list[dict[str, Any]], detail: str,
                candidate: Path | None = None) -> Outcome:
        self._finished = True
        record.update(status=status, finished=time.time(), step=step, detail=detail,
                      worst_resource_level=self.monitor.worst.name if self.monitor else None)
        atomic_write_json(self.run.run_file, record)
        return Outcome(status, step, history, candidate, detail)

    # -- the candidate -----------------------------------------------------------------------------
    def _write_candidate(self, model: Any, new_replay: Samples, counts: dict[str, int],
                         record: dict[str, Any], history: list[dict[str, Any]]) -> Path:
        """The adapter as peft writes it, `lora_adapters.pt`, the merged model directory (ONNX,
        safetensors, policy.json, the new rehearsal set), metrics.json; swapped in at once."""
        import peft

        out = self.candidate_dir
        tmp = out.with_name(f".{out.name}.tmp-{os.urandom(4).hex()}")
        tmp.mkdir(parents=True)
        try:
            model.eval()
            model.save_pretrained(str(tmp))
            torch.save({"lora": peft.get_peft_model_state_dict(model), "base": record["base"],
                        "settings": record["settings"]}, tmp / "lora_adapters.pt")
            merged = model.merge_and_unload().eval()
            run_id = record["run_id"]
            write_model_dir(merged, self.base_dir, tmp / "model", id_suffix=f"+{run_id}",
                            replay=new_replay,
                            training={"run": run_id, "base": record["base_id"],
                                      "places": record["places"],
                                      "place_sources": {**_place_sources(self.base_dir),
                                                        **record.get("place_sources", {})},
                                      "replay_places": sorted(set(new_replay.places)),
                                      "steps": history[-1]["step"] if history else 0,
                                      "settings": record["settings"]})
            atomic_write_json(tmp / "metrics.json", {
                "run_id": run_id, "history": history, "places": record["places"],
                "episodes": record["episodes"], **counts})
            fsync_dir(tmp)
            old = out.with_name(f".{out.name}.old-{os.urandom(4).hex()}")
            if out.exists():
                os.replace(out, old)
            os.replace(tmp, out)
            fsync_dir(out.parent)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out


def load_base(model_dir: Path) -> PolicyNet:
    """The policy network with a model directory's weights."""
    from brain.control.model import load_spec

    spec = load_spec(model_dir)
    if spec.extra.get("arch") != ARCH or not spec.weights:
        raise TrainError(f"{model_dir}: not a {ARCH} model with weights; it cannot be adapted")
    net = PolicyNet()
    net.load_state_dict(_load_weights(model_dir))
    return net.eval()


def write_model_dir(net: Any, base_dir: Path, out: Path, *, id_suffix: str,
                    replay: Samples | None = None,
                    training: dict[str, Any] | None = None) -> None:
    """A model directory for `net` (merged weights): ONNX, safetensors, the rehearsal set and
    policy.json derived from the base model's (same input and output contract)."""
    from safetensors.torch import save_file

    from brain.control.model import load_spec

    spec = load_spec(base_dir)
    out.mkdir(parents=True, exist_ok=True)
    export_onnx(net, out / "policy.onnx", spec.input_width, spec.input_height)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(out / "policy.safetensors"))
    doc = json.loads((base_dir / "policy.json").read_text())
    doc.update(id=f"{spec.id.split('+')[0]}{id_suffix}", files={"onnxruntime": "policy.onnx"},
               weights="policy.safetensors")
    doc.pop("adapters", None)
    doc.pop("replay", None)
    if replay is None and spec.extra.get("replay"):
        replay = load_replay(base_dir)
    if replay is not None and len(replay):
        replay_set.save(out / replay_set.REPLAY_FILE, replay)
        doc["replay"] = replay_set.REPLAY_FILE
    if training is not None:
        doc["training"] = training
    (out / "policy.json").write_text(json.dumps(doc, indent=2) + "\n")


def export_onnx(model: Any, path: Path, width: int, height: int) -> None:
    """ONNX for onnxruntime, as the seed's (tools/train_seed.py): input `image`, N x 3 x H x W."""
    dummy = torch.zeros(1, 3, height, width)
    # The exporter logs its passes at INFO and missing torchvision at WARNING: noise here.
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "onnx_ir", "onnxscript")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        _export(model, path, dummy)
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)


def _export(model: Any, path: Path, dummy: torch.Tensor) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), str(path), input_names=["image"],
                          output_names=["action"], opset_version=18, dynamo=True,
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                          external_data=False, verbose=False)


class CosineDecay:
    """Learning-rate factor: cosine from 1 to 0.1 over the run (a class: it pickles)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def __call__(self, step: int) -> float:
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(step, self.steps) / self.steps))


def new_order(shuffle: int, n: int, rng: np.random.Generator,
              previous: np.ndarray | None) -> np.ndarray:
    if shuffle == 0:
        return np.arange(n)
    if shuffle == 1 and previous is not None:
        return previous
    return rng.permutation(n)


def _load_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from brain.control.model import load_spec

    spec = load_spec(model_dir)
    return load_file(str(model_dir / str(spec.weights)))


def _place_sources(model_dir: Path) -> dict[str, dict[str, str]]:
    """How the simulator drives again each place a model was trained on (its policy.json)."""
    from brain.control.model import load_spec

    training = load_spec(model_dir).extra.get("training") or {}
    sources = training.get("place_sources") or {}
    return {str(k): dict(v) for k, v in sources.items() if isinstance(v, dict)}


def load_replay(model_dir: Path) -> Samples | None:
    from brain.control.model import load_spec

    name = load_spec(model_dir).extra.get("replay")
    if not name or not (model_dir / str(name)).is_file():
        return None
    return replay_set.load(model_dir / str(name))


def val_tensors(val: Samples) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not len(val):
        return None
    return (torch.from_numpy(val.images).permute(0, 3, 1, 2),
            torch.from_numpy(val.actions))


def val_loss(model: Any, val: tuple[torch.Tensor, torch.Tensor] | None,
              weights: torch.Tensor) -> float | None:
    if val is None:
        return None
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(val[0]), VAL_CHUNK):
            x, y = val[0][start:start + VAL_CHUNK].contiguous(), val[1][start:start + VAL_CHUNK]
            total += float((((model(x.float() / 255.0) - y) ** 2) * weights).sum() / 2)
    return round(total / len(val[0]), 6)


def val_loss_of(model_dir: Path, val: Samples, loss_weights: tuple[float, float]) -> float | None:
    """The validation loss of a model directory's weights (the gate compares the active one)."""
    net = PolicyNet()
    net.load_state_dict(_load_weights(model_dir))
    return val_loss(net, val_tensors(val), torch.tensor(loss_weights, dtype=torch.float32))


