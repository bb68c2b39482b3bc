"""Closed-loop evaluation in the simulator: `brain eval`, the promotion gate and the tests.

A policy drives the simulated car through the daemon's own stack (`brain.rig.Rig`: the safety
guard, the mode machine in AUTONOMOUS/DRIVING, the policy thread, the control loop and its
clamp), in lockstep (`control.lockstep`): the loop, the camera and the policy advance on
simulated time, every frame is inferred before the next tick, and 40 simulated seconds take a
few wall seconds. The same run is therefore the same on every machine.

Measured per run: mean and max |cross-track error|, off-track events (entering the off-road
from the road) and the fraction of ticks off the road, laps over the run.

Models: a model directory (`policy.json`), a signed bundle file (its signature and hashes are
checked against the trusted keys, the robot's deployment rules are not: evaluating a bundle
does not install it), `active` (the daemon's active bundle in the state directory), and
optionally a peft adapter directory merged into the model's weights first (this needs torch,
so only this process ever loads it).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brain.config import builtin_config
from brain.control.model import SPEC_FILE, ModelError, load_spec
from brain.hardware.robot import Action, Observation

if TYPE_CHECKING:
    from brain.config import Config

log = logging.getLogger(__name__)

DEFAULT_SECONDS = 40.0
EVAL_SEED = 1  # the start-pose noise of every evaluation (the seed's figures use it too)
STALL_S = 120.0  # the least wall time a run may take before it is declared stuck
PROFILE_BINS = 50  # cte_along_track: the lap in 50 stretches of equal length


class EvalError(RuntimeError):
    """The evaluation cannot run; the message says why (a bad model, track or file)."""


@dataclass
class _Tally:
    """Per-tick ground truth from the simulator, taken as the loop's step sink."""

    want: int
    abs_cte: list[float] = field(default_factory=list)
    off_ticks: int = 0
    off_events: int = 0
    was_off: bool = False
    laps: float = 0.0
    policy_ticks: int = 0
    # |cte| by where the car is along the lap (PROFILE_BINS equal lengths from the start line)
    along_sum: list[float] = field(default_factory=lambda: [0.0] * PROFILE_BINS)
    along_n: list[int] = field(default_factory=lambda: [0] * PROFILE_BINS)

    def sink(self, obs: Observation, action: Action, source: str) -> None:
        info = obs.info or {}
        if len(self.abs_cte) >= self.want or "cte" not in info:
            return
        off = bool(info.get("off_track"))
        self.abs_cte.append(abs(float(info["cte"])))
        self.off_ticks += off
        self.off_events += off and not self.was_off
        self.was_off = off
        self.laps = float(info.get("progress_laps", 0.0))
        self.policy_ticks += source == "policy"
        where = int((self.laps % 1.0) * PROFILE_BINS) % PROFILE_BINS
        self.along_sum[where] += self.abs_cte[-1]
        self.along_n[where] += 1

    def along_track(self) -> list[float | None]:
        """Mean |cte| per stretch of the lap; None where the car never got to."""
        return [round(s / n, 5) if n else None
                for s, n in zip(self.along_sum, self.along_n, strict=True)]


def drive(model_dir: Path, *, track: str | None = None, track_file: str | None = None,
          seconds: float = DEFAULT_SECONDS, seed: int = EVAL_SEED,
          base: Config | None = None) -> dict[str, Any]:
    """Drive the model in `model_dir` closed loop for `seconds` simulated seconds. `base`
    lends its camera and safety settings (the robot's own); everything else is the built-in
    simulator. Raises EvalError."""
    from brain.config import ConfigError
    from brain.rig import Rig

    if not (math.isfinite(seconds) and 1.0 <= seconds <= 3600.0):
        raise EvalError(f"seconds must be 1..3600, not {seconds}")
    try:
        load_spec(model_dir)
    except ModelError as e:
        raise EvalError(str(e)) from None
    with tempfile.TemporaryDirectory(prefix="brain-eval-") as state:
        overrides: dict[str, Any] = {
            "profile": "sim", "state_dir": state, "control.lockstep": True,
            "control.realtime": False, "api.enabled": False, "api.mdns": False,
            "policy.model_dir": str(model_dir), "profiles.sim.seed": seed}
        if track:
            overrides["profiles.sim.track"] = track
        if track_file:
            overrides["profiles.sim.track_file"] = str(track_file)
        if base is not None:
            for section in ("camera", "safety"):
                for key, value in vars(getattr(base, section)).items():
                    overrides[f"{section}.{key}"] = value
        try:
            cfg = builtin_config(overrides)
        except ConfigError as e:
            raise EvalError(str(e)) from None
        rig = Rig.build(cfg, model_id="eval")
        if not rig.model.available():
            rig.stop()
            raise EvalError(f"{model_dir}: the policy could not be loaded (see the log)")
        hz = cfg.drive_hz
        tally = _Tally(want=round(seconds * hz))
        rig.loop.sinks.append(tally.sink)
        rig.modes.request("arm")
        rig.modes.request("drive")
        t0 = time.monotonic()
        try:
            rig.loop.hold()
            rig.start()
            rig.loop.advance(tally.want, timeout=max(STALL_S, seconds * 20))
            wall = time.monotonic() - t0
            world = rig.robot.world
            mode = rig.modes.mode.value
        except RuntimeError as e:
            raise EvalError(str(e)) from None
        finally:
            rig.stop()
    ticks = len(tally.abs_cte)
    return {"model": load_spec(model_dir).id, "track": world.track.name,
            "track_file": str(track_file) if track_file else None,
            "seconds": ticks / hz, "ticks": ticks,
            "mean_abs_cte": round(sum(tally.abs_cte) / ticks, 5),
            "max_abs_cte": round(max(tally.abs_cte), 5),
            "off_track_events": tally.off_events,
            "off_track_fraction": round(tally.off_ticks / ticks, 5),
            "laps": round(tally.laps, 4), "cte_along_track": tally.along_track(),
            "policy_fraction": round(tally.policy_ticks / ticks, 4),
            "road_width_m": world.track.width, "wall_s": round(wall, 2), "final_mode": mode,
            "seed": seed}


def summary_line(r: dict[str, Any]) -> str:
    return (f"{r['track']:<16} mean|cte| {r['mean_abs_cte']:.4f} m  max {r['max_abs_cte']:.3f} m"
            f"  off-track {r['off_track_events']} ({r['off_track_fraction'] * 100:.1f} %)"
            f"  laps {r['laps']:.2f}  [{r['seconds']:.0f} s simulated in {r['wall_s']:.1f} s]")


# -- models ----------------------------------------------------------------------------------------

@contextmanager
def model_directory(model: str, *, adapter: Path | None = None, cfg: Config | None = None,
                    keys_dir: Path | None = None) -> Iterator[Path]:
    """A model directory for `model` (a directory, a bundle file or `active`), with `adapter`
    merged in when given; temporary files are removed on exit. Raises EvalError."""
    with tempfile.TemporaryDirectory(prefix="brain-eval-model-") as tmp:
        work = Path(tmp)
        if model == "active":
            directory = active_bundle_dir(cfg)
        elif Path(model).is_dir():
            directory = Path(model)
        elif Path(model).is_file():
            directory = _unpack_bundle(Path(model), work / "bundle", cfg, keys_dir)
        else:
            raise EvalError(f"{model}: no such model directory or bundle file")
        if adapter is not None:
            directory = merge_adapter(directory, adapter, work / "merged")
        yield directory


def active_bundle_dir(cfg: Config | None) -> Path:
    """The directory of the daemon's active bundle (model/state.json), or the configured model
    when no bundle was ever installed."""
    from brain.ota.slots import ModelPaths
    from brain.rig import resolve_model_dir

    if cfg is None:
        raise EvalError("`active` needs a configuration (the state directory)")
    paths = ModelPaths(cfg.layout.model)
    try:
        state = json.loads(paths.state.read_text())
        bundle_id = state["active"]["bundle_id"]
    except FileNotFoundError:
        return resolve_model_dir(cfg)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EvalError(f"{paths.state}: unreadable ({e})") from None
    d = paths.bundle(bundle_id)
    if not (d / SPEC_FILE).is_file():
        raise EvalError(f"the active bundle {bundle_id} is not in {paths.store}")
    return d


def _unpack_bundle(bundle: Path, dest: Path, cfg: Config | None,
                   keys_dir: Path | None) -> Path:
    """Verify a signed bundle (signature, hashes, sizes) into `dest`. Only the trust is
    required: a bundle made for another robot may be evaluated here."""
    from brain.ota import keys
    from brain.ota.bundle import MANIFEST, BundleError, BundleVerifier, Expectations

    try:
        with tarfile.open(bundle, "r:") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST or not first.isfile():
                raise EvalError(f"{bundle}: not a bundle ({MANIFEST} must come first)")
            reader = tar.extractfile(first)
            assert reader is not None
            peek = json.loads(reader.read(1 << 20))
        comp = peek["compatibility"]
        profile = str(comp["robot_profiles"][0])
        targets = peek.get("targets") or [""]
        max_bytes = cfg.ota.max_bundle_bytes if cfg is not None else 16 << 30
        want = Expectations(profile=profile, robot_id=str(targets[0]),
                            max_bundle_bytes=max_bytes, daemon_version=comp["min_daemon_version"])
    except (OSError, tarfile.TarError, ValueError, KeyError, IndexError, TypeError) as e:
        raise EvalError(f"{bundle}: not a readable bundle ({e})") from None
    trusted = Path(cfg.ota.trusted_keys_dir) if cfg is not None else None
    keyring = keys.Keyring.load(trusted if trusted and trusted.is_dir() else None)
    extra = [keys_dir] if keys_dir else []
    if cfg is not None:
        extra.append(cfg.layout.keys)  # the robot's own key: bundles it trained itself
    for d in extra:
        for pub in sorted(d.glob("*.pub")) if d.is_dir() else []:
            try:
                public = keys.load_public(pub)
            except keys.KeyFileError:
                continue
            keyring.device[keys.key_id(public)] = public
            keyring.publisher.setdefault(keys.key_id(public), public)
    store, staging = dest / "store", dest / "staging"
    store.mkdir(parents=True)
    try:
        staged = BundleVerifier(keyring, store, staging).stage(bundle, want)
    except BundleError as e:
        raise EvalError(f"{bundle}: refused: {e.reason}: {e.detail}") from None
    return staged.path


def merge_adapter(model_dir: Path, adapter: Path, out: Path) -> Path:
    """A model directory with the peft adapter in `adapter` merged into `model_dir`'s weights
    and exported to ONNX, as the gate does."""
    from brain.train.trainer import write_model_dir

    if not (adapter / "adapter_config.json").is_file():
        raise EvalError(f"{adapter}: not a peft adapter directory (no adapter_config.json)")
    import peft

    from brain.train.trainer import load_base

    try:
        base = load_base(model_dir)
        merged = peft.PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().eval()
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise EvalError(f"{adapter}: cannot apply it to {model_dir}: {e}") from None
    out.mkdir(parents=True)
    write_model_dir(merged, model_dir, out, id_suffix=f"+{adapter.name}")
    return out


def copy_model(src: Path, dst: Path) -> None:
    """Copy a model directory (only the files its spec names)."""
    from brain.ota.bundle import model_files

    dst.mkdir(parents=True, exist_ok=True)
    for name in model_files(src):
        shutil.copyfile(src / name, dst / name)
