"""`brain-cloud train`: fine-tune the whole policy on an RLDS export, on one process or many.

The network, the frame pre-processing, the episode split, the data order, the learning-rate
schedule and the run layout are the robot trainer's (`brain.train`): one source of truth. What
differs is the scale: every weight trains (not a LoRA adapter), optionally starting from the
robot's candidate adapter merged into the base, and the work can spread over processes with
`torchrun` (PyTorch DDP: gloo on CPU, nccl on GPU).

Distributed runs: every rank draws the same global batch order from the same seeded generator
and takes an equal slice of each batch; DDP averages the gradients, so a step is the step of
the whole batch, and the weights match a single-process run up to floating-point summation
order (tests/test_cloud_train.py states the tolerance). Dropout is off by default for the same
reason: each rank would draw its own masks.

Checkpoint discipline (rented machines are preempted): rank 0 writes full-state checkpoints
(weights, optimizer, schedule, every generator, the order and the position in it) every
`checkpoint_every` steps with rotation; `--resume` continues the identical trajectory; SIGTERM
or SIGINT on any rank stops every rank at the same step (a flag all-reduced each step) and rank 0
writes `emergency_step_<N>.pt`, then the process exits 0 with status `interrupted`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from brain.control.model import load_spec
from brain.durable import atomic_write_json
from brain.rlds.reader import iter_episodes, verify_export
from brain.train import checkpoint
from brain.train import replay as replay_set
from brain.train.data import Samples, decode_frame, digest_of, place_of, validation_indices
from brain.train.model import ARCH
from brain.train.settings import SettingsError, load_config_file
from brain.train.trainer import (
    CosineDecay,
    RunPaths,
    load_base,
    load_replay,
    new_order,
    val_loss,
)

FINAL_WEIGHTS = "final.safetensors"
REPLAY = replay_set.REPLAY_FILE


class CloudTrainSettings(BaseModel):
    """The cloud training configuration (JSON). Every field has a default."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    batch: int = Field(default=32, ge=1, le=65536, description="global batch (all ranks)")
    max_steps: int = Field(default=1000, ge=1, le=100_000_000)
    lr: float = Field(default=1e-3, gt=0, le=1, allow_inf_nan=False)
    shuffle: Literal[0, 1, 2] = Field(default=2, description="as the robot's: 0 recorded "
                                      "order, 1 one order, 2 a new order every pass")
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    threads: int = Field(default=1, ge=1, le=256, description="torch threads per rank")
    val_fraction: float = Field(default=0.15, ge=0, lt=1, allow_inf_nan=False)
    dropout: float = Field(default=0.0, ge=0, lt=1, allow_inf_nan=False)
    checkpoint_every: int = Field(default=100, ge=1)
    keep_checkpoints: int = Field(default=3, ge=1, le=1000)
    log_every: int = Field(default=10, ge=1)
    loss_weights: tuple[float, float] = (1.0, 0.5)
    replay_per_batch: int = Field(default=8, ge=0, le=65536, description="samples of the base "
                                  "model's rehearsal set in every global batch")
    replay_size: int = Field(default=512, ge=0, le=1_000_000,
                             description="samples in the new model's rehearsal set")


class CloudTrainError(RuntimeError):
    """The run cannot start or go on; the message says why."""


def load_settings(path: Path | None) -> CloudTrainSettings:
    try:
        return load_config_file(CloudTrainSettings, path)
    except SettingsError as e:
        raise CloudTrainError(str(e)) from None


@dataclass
class Frames:
    images: np.ndarray  # N x H x W x 3 uint8, as the policy sees them
    actions: np.ndarray  # N x 2 float32
    episodes: list[str]
    places: list[str]  # per frame: where it was recorded (the rehearsal set keeps places)

    def samples(self) -> Samples:
        return Samples(self.images, self.actions, self.places)


def load_frames(export_dir: Path, width: int, height: int, val_fraction: float
                ) -> tuple[Frames, Frames, dict[str, Any]]:
    """Verify the export, then decode each frame once (the first step that showed it), split by
    episode exactly as the robot's trainer splits."""
    manifest = verify_export(export_dir)
    episodes = list(iter_episodes(export_dir, manifest))
    # Content order, as the robot's trainer: the same episodes under other ids split the same.
    episodes.sort(key=lambda e: (digest_of(e.actions[np.flatnonzero(e.frame_new)],
                                           (e.images[k] for k in np.flatnonzero(e.frame_new))),
                                 e.id))
    val_idx = validation_indices(len(episodes), val_fraction)
    parts: dict[bool, tuple[list[np.ndarray], list[np.ndarray], list[str], list[str]]] = {
        False: ([], [], [], []), True: ([], [], [], [])}
    for i, ep in enumerate(episodes):
        new = np.flatnonzero(ep.frame_new)
        imgs, acts, ids, places = parts[i in val_idx]
        imgs.append(np.stack([decode_frame(ep.images[k], width, height) for k in new])
                    if len(new) else np.empty((0, height, width, 3), np.uint8))
        acts.append(ep.actions[new, :2].astype(np.float32))
        ids.append(ep.id)
        places += [place_of(ep.metadata.get("metadata") or {})] * len(new)

    def frames(val: bool) -> Frames:
        imgs, acts, ids, places = parts[val]
        if not imgs:
            return Frames(np.empty((0, height, width, 3), np.uint8),
                          np.empty((0, 2), np.float32), [], [])
        return Frames(np.concatenate(imgs), np.concatenate(acts), ids, places)

    return frames(False), frames(True), manifest


class _Dist:
    """The process group when torchrun started us (WORLD_SIZE > 1), else a single process."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = torch.device("cpu")
        if self.world > 1:
            import torch.distributed as dist

            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                local = int(os.environ.get("LOCAL_RANK", "0"))
                torch.cuda.set_device(local)
                self.device = torch.device("cuda", local)
            dist.init_process_group(backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any (a stop request)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def mean(self, value: float) -> float:
        """The mean of `value` over the ranks (each rank's loss is its share's)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / self.world

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def merged_start(base_dir: Path, adapters: Path | None) -> torch.nn.Module:
    """The base policy, with the robot's candidate LoRA adapter merged in when given (a peft
    adapter directory as `brain train` writes it: adapter_model.safetensors + config)."""
    net = load_base(base_dir)
    if adapters is None:
        return net
    import peft

    if not (adapters / "adapter_config.json").is_file():
        raise CloudTrainError(f"{adapters}: no adapter_config.json; pass the robot's "
                              "model/adapters/candidate directory")
    try:
        merged = peft.PeftModel.from_pretrained(net, str(adapters)).merge_and_unload()
    except Exception as e:  # peft raises many kinds for a mismatched adapter
        raise CloudTrainError(f"{adapters}: the adapter does not fit the base policy: {e}") \
            from None
    for param in merged.parameters():  # peft froze the base weights; here every weight trains
        param.requires_grad_(True)
    return merged


class CloudTrainer:
    def __init__(self, settings: CloudTrainSettings, export_dir: Path, base_dir: Path,
                 run_dir: Path, *, adapters: Path | None = None,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.s = settings
        self.export_dir = Path(export_dir)
        self.base_dir = Path(base_dir)
        self.run = RunPaths(Path(run_dir))
        self.adapters = adapters
        self.on_event = on_event or (lambda _e: None)
        self._signal: str | None = None

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signal = signal.Signals(signum).name

    def train(self, resume: bool = False) -> dict[str, Any]:
        """Train; returns the run record (status completed or interrupted)."""
        s, dist = self.s, _Dist()
        torch.set_num_threads(s.threads)
        torch.use_deterministic_algorithms(True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            return self._train(dist, resume)
        finally:
            dist.close()

    def _emit(self, dist: _Dist, event: dict[str, Any]) -> None:
        if dist.main:
            self.on_event(event)

    def _train(self, dist: _Dist, resume: bool) -> dict[str, Any]:
        s = self.s
        spec = load_spec(self.base_dir)
        if spec.extra.get("arch") != ARCH or not spec.weights:
            raise CloudTrainError(f"{self.base_dir}: not a {ARCH} model with weights")
        if s.batch % dist.world:
            raise CloudTrainError(f"batch {s.batch} does not split evenly over "
                                  f"{dist.world} processes")
        t0 = time.monotonic()
        train, val, manifest = load_frames(self.export_dir, spec.input_width,
                                           spec.input_height, s.val_fraction)
        if len(train.images) < s.batch:
            raise CloudTrainError(f"only {len(train.images)} training frames in "
                                  f"{self.export_dir}; need at least a batch ({s.batch})")
        record = self._record(resume, spec.id, manifest, train, val)
        self._emit(dist, {"event": "data", "episodes": len(manifest["episodes"]),
                          "train_frames": len(train.images), "val_frames": len(val.images),
                          "load_s": round(time.monotonic() - t0, 2), "world": dist.world})
        torch.manual_seed(s.seed)
        model = merged_start(self.base_dir, self.adapters).to(dist.device)
        model.drop.p = s.dropout  # type: ignore[union-attr]
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            wrapped: torch.nn.Module = DistributedDataParallel(model)
        else:
            wrapped = model
        opt = torch.optim.Adam(model.parameters(), lr=s.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, CosineDecay(s.max_steps))
        order_rng = np.random.default_rng(s.seed)
        random.seed(s.seed)
        n = len(train.images)
        order, pos, passes, step, history = new_order(s.shuffle, n, order_rng, None), 0, 0, 0, []
        replay_rng_state = None
        latest = self.run.latest_checkpoint() if resume else None
        if latest is not None:
            try:
                ck = checkpoint.load(latest, map_location=dist.device)
            except checkpoint.CheckpointError as e:
                raise CloudTrainError(str(e)) from None
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            torch.set_rng_state(ck["torch_rng"])
            order_rng.bit_generator.state = ck["order_rng"]
            replay_rng_state = ck.get("replay_rng")
            random.setstate(ck["python_random"])
            order, pos, passes = np.asarray(ck["order"]), ck["pos"], ck["passes"]
            step, history = ck["step"], ck["history"]
            self._emit(dist, {"event": "resumed_from", "checkpoint": latest.name, "step": step})
        images, actions = torch.from_numpy(train.images), torch.from_numpy(train.actions)
        # Rehearsal, as on the robot: a few samples of the base model's own set in every batch,
        # so that learning the new places does not unlearn the old ones.
        rehearsal = load_replay(self.base_dir)
        k_replay = min(s.replay_per_batch, s.batch - 1) if rehearsal is not None and \
            len(rehearsal) else 0
        k_new = s.batch - k_replay
        r_images = torch.from_numpy(rehearsal.images) if k_replay and rehearsal else None
        r_actions = torch.from_numpy(rehearsal.actions) if k_replay and rehearsal else None
        replay_rng = np.random.default_rng(s.seed + 1)
        weights = torch.tensor(s.loss_weights, dtype=torch.float32, device=dist.device)
        val_t = (torch.from_numpy(val.images).permute(0, 3, 1, 2),
                 torch.from_numpy(val.actions)) if len(val.images) else None
        if replay_rng_state is not None:
            replay_rng.bit_generator.state = replay_rng_state
        share = s.batch // dist.world
        losses: list[float] = []
        t_start, step0 = time.monotonic(), step
        model.train()
        while step < s.max_steps:
            if dist.any(self._signal is not None):
                if dist.main:
                    self._checkpoint(model, opt, sched, order_rng, order, pos, passes, step,
                                     history, emergency=True, replay_rng=replay_rng)
                dist.barrier()
                return self._finish(dist, record, "interrupted", step, history,
                                    f"{self._signal or 'a peer'}: emergency checkpoint at "
                                    f"step {step}")
            if pos + k_new > n:
                passes += 1
                order, pos = new_order(s.shuffle, n, order_rng, order), 0
            idx = torch.from_numpy(order[pos:pos + k_new])
            pos += k_new
            bx, by = images[idx], actions[idx]  # the global batch, the same on every rank
            if r_images is not None and r_actions is not None:
                j = torch.from_numpy(replay_rng.integers(0, len(r_images), k_replay))
                bx, by = torch.cat([bx, r_images[j]]), torch.cat([by, r_actions[j]])
            mine = slice(dist.rank * share, (dist.rank + 1) * share)
            x = bx[mine].permute(0, 3, 1, 2).float().div(255.0).to(dist.device)
            y = by[mine].to(dist.device)
            loss = (((wrapped(x) - y) ** 2) * weights).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(float(loss.item()))
            if step % s.log_every == 0 or step == s.max_steps:
                rate = (step - step0) / max(time.monotonic() - t_start, 1e-9)
                event: dict[str, Any] = {
                    "event": "step", "step": step, "max_steps": s.max_steps,
                    "loss": round(dist.mean(float(np.mean(losses))), 6),
                    "lr": round(float(sched.get_last_lr()[0]), 8),
                    "steps_per_s": round(rate, 3), "eta_s": round((s.max_steps - step) / rate, 1)}
                if step % s.checkpoint_every == 0 or step == s.max_steps:
                    event["val_loss"] = val_loss(model, val_t, weights.cpu()) \
                        if dist.device.type == "cpu" else None
                    model.train()
                history.append({k: v for k, v in event.items() if k != "event"})
                losses.clear()
                self._emit(dist, event)
            if step % s.checkpoint_every == 0 and step < s.max_steps and dist.main:
                self._checkpoint(model, opt, sched, order_rng, order, pos, passes, step, history,
                                 replay_rng=replay_rng)
        if dist.main:
            from safetensors.torch import save_file

            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(self.run.root / FINAL_WEIGHTS))
            # The new model's rehearsal set: the old places and the new, evenly.
            replay_set.save(self.run.root / REPLAY, replay_set.merge(
                rehearsal, train.samples(), s.replay_size, seed=s.seed))
        dist.barrier()
        return self._finish(dist, record, "completed", step, history, "")

    def _record(self, resume: bool, base_id: str, manifest: dict[str, Any], train: Frames,
                val: Frames) -> dict[str, Any]:
        if resume:
            if not self.run.run_file.exists():
                raise CloudTrainError(f"nothing to resume in {self.run.root}")
            record: dict[str, Any] = json.loads(self.run.run_file.read_text())
            if record.get("settings") != self.s.model_dump(mode="json"):
                raise CloudTrainError("the settings differ from the run being resumed; resume "
                                      "with the same configuration")
            if record.get("train_ids") != train.episodes or record.get("val_ids") != val.episodes:
                raise CloudTrainError("the export differs from the run being resumed")
            return record
        record = {"run_id": self.run.root.name, "created": time.time(),
                  "base": str(self.base_dir), "base_id": base_id,
                  "adapters": str(self.adapters) if self.adapters else None,
                  "export": str(self.export_dir), "export_origin": manifest.get("origin"),
                  "settings": self.s.model_dump(mode="json"),
                  "train_ids": train.episodes, "val_ids": val.episodes,
                  "samples": {"train": len(train.images), "val": len(val.images)},
                  "world": int(os.environ.get("WORLD_SIZE", "1")), "status": "running"}
        if int(os.environ.get("RANK", "0")) == 0:
            self.run.checkpoints.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.run.run_file, record)
        return record

    def _checkpoint(self, model: torch.nn.Module, opt: Any, sched: Any,
                    order_rng: np.random.Generator, order: np.ndarray, pos: int, passes: int,
                    step: int, history: list[dict[str, Any]], emergency: bool = False,
                    replay_rng: np.random.Generator | None = None) -> Path:
        name = f"emergency_step_{step:06d}.pt" if emergency else f"step_{step:06d}.pt"
        path = self.run.checkpoints / name
        checkpoint.save(path, {
            "step": step, "model": {k: v.cpu() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "torch_rng": torch.get_rng_state(), "order_rng": order_rng.bit_generator.state,
            "replay_rng": replay_rng.bit_generator.state if replay_rng else None,
            "python_random": random.getstate(), "order": order, "pos": pos, "passes": passes,
            "history": history, "settings": self.s.model_dump(mode="json")})
        if not emergency:
            for old in sorted(self.run.checkpoints.glob("step_*.pt"))[:-self.s.keep_checkpoints]:
                old.unlink(missing_ok=True)
        self.on_event({"event": "checkpoint", "step": step, "path": str(path)})
        return path

    def _finish(self, dist: _Dist, record: dict[str, Any], status: str, step: int,
                history: list[dict[str, Any]], detail: str) -> dict[str, Any]:
        record.update(status=status, finished=time.time(), step=step, detail=detail,
                      history=history)
        if status == "completed":
            record["weights"] = FINAL_WEIGHTS
        if dist.main:
            atomic_write_json(self.run.run_file, record)
        self._emit(dist, {"event": "finished", "status": status, "step": step,
                          "detail": detail})
        return record
