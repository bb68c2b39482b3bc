"""The training configuration file (etc/train/pi5-donkey.json), validated field by field.

Documented in docs/training.md. Every field has a default, so `{}` is a valid file; an unknown
key, a wrong type or an out-of-range value is an error naming the field and the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

LORA_TARGETS = ("conv1", "conv2", "conv3", "conv4", "fc1", "fc2", "head")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Lora(_Strict):
    rank: int = Field(default=8, ge=1, le=64)
    alpha: int = Field(default=16, ge=1, le=1024)
    dropout: float = Field(default=0.0, ge=0, lt=1, allow_inf_nan=False)
    target_modules: tuple[Literal[LORA_TARGETS], ...] = LORA_TARGETS  # type: ignore[valid-type]


class Replay(_Strict):
    per_batch: int = Field(default=4, ge=0, le=64, description="rehearsal samples in every batch")
    size: int = Field(default=512, ge=0, le=100_000, description="samples in the candidate's set")


class Quality(_Strict):
    min_seconds: float = Field(default=3.0, ge=0, allow_inf_nan=False)
    min_frames: int = Field(default=30, ge=1)
    min_mean_throttle: float = Field(default=0.05, ge=0, le=1, allow_inf_nan=False)
    max_skew_ms: float = Field(default=5.0, gt=0, allow_inf_nan=False)


class Gate(_Strict):
    """The promotion gate, and the learning goal: the gate, the field plan, the tests and
    bench/train.py all read these thresholds from here (docs/training.md, "The learning goal")."""

    enabled: bool = Field(default=True, description="run the gate after training")
    eval_seconds: float = Field(default=40.0, ge=1, le=3600, allow_inf_nan=False)
    target_max_mean_cte: float = Field(default=0.02, gt=0, le=1, allow_inf_nan=False,
                                       description="mean |cte| (m) to reach on a target place")
    keep_max_ratio: float = Field(default=1.10, ge=1, le=100, allow_inf_nan=False,
                                  description="candidate / active mean |cte| on kept places")
    keep_floor_below_m: float = Field(default=0.01, ge=0, le=1, allow_inf_nan=False,
                                      description="a kept place the active policy drives "
                                                  "under this (m) gets the floor instead")
    keep_floor_m: float = Field(default=0.002, ge=0, le=1, allow_inf_nan=False,
                                description="the floor: active + this (m) is always allowed "
                                            "there (a ratio of a near-zero figure is noise)")
    max_val_loss_ratio: float = Field(default=1.5, gt=0, le=100, allow_inf_nan=False,
                                      description="candidate / active validation loss on the "
                                                  "new data must be below this")
    latency_budget_ms: float = Field(default=30.0, gt=0, le=1000, allow_inf_nan=False)
    golden_count: int = Field(default=4, ge=1, le=64)
    eval_workers: int = Field(default=2, ge=1, le=16,
                              description="closed-loop evaluations run side by side")

    def kept_limit(self, active_mean_cte: float) -> float:
        """The most mean |cte| (m) a candidate may have on a kept place where the active
        policy has `active_mean_cte`: the ratio, or the floor on places already under it."""
        limit = self.keep_max_ratio * active_mean_cte
        if active_mean_cte < self.keep_floor_below_m:
            limit = max(limit, active_mean_cte + self.keep_floor_m)
        return limit

    def target_ok(self, result: dict[str, Any]) -> bool:
        """A closed-loop result on a target place meets the goal."""
        return (result["off_track_events"] == 0
                and result["mean_abs_cte"] <= self.target_max_mean_cte)

    def kept_ok(self, candidate: dict[str, Any], active: dict[str, Any]) -> bool:
        """A candidate's closed-loop result on a kept place against the active policy's."""
        return (candidate["off_track_events"] == 0
                and candidate["mean_abs_cte"] <= self.kept_limit(active["mean_abs_cte"]))


class TrainSettings(_Strict):
    batch: int = Field(default=8, ge=1, le=4096)
    max_steps: int = Field(default=300, ge=1, le=10_000_000)
    shuffle: Literal[0, 1, 2] = Field(
        default=2, description="0: in recorded order; 1: one shuffled order for the whole run; "
                               "2: a new order every pass")
    lr: float = Field(default=2e-3, gt=0, le=1, allow_inf_nan=False)
    lora: Lora = Lora()
    replay: Replay = Replay()
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    threads: int = Field(default=1, ge=1, le=64)
    val_fraction: float = Field(default=0.15, ge=0, lt=1, allow_inf_nan=False)
    checkpoint_every: int = Field(default=50, ge=1)
    keep_checkpoints: int = Field(default=5, ge=1, le=1000)
    log_every: int = Field(default=10, ge=1)
    loss_weights: tuple[float, float] = (1.0, 0.5)
    quality: Quality = Quality()
    gate: Gate = Gate()
    train_while_driving: bool = False


M = TypeVar("M", bound=BaseModel)


class SettingsError(ValueError):
    """The training configuration is malformed; the message names the field and the file."""


def load_settings(path: Path | None) -> TrainSettings:
    return load_config_file(TrainSettings, path)


def load_config_file(model: type[M], path: Path | None) -> M:
    """A JSON configuration file validated by `model` (its defaults when `path` is None);
    SettingsError names the file and the first bad field. The cloud companion's training
    configuration is read the same way."""
    if path is None:
        return model()
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SettingsError(f"{path}: no such training configuration") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SettingsError(f"{path}: not readable JSON ({e})") from None
    try:
        return model.model_validate(doc)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "(top)"
        raise SettingsError(f"{path}: {where}: {err.get('msg')}") from None
