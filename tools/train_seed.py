"""Train the seed policy on simulator teacher demonstrations and write a model directory.

    python tools/train_seed.py --out brain/models/seed

Steps: collect (image, teacher action) pairs on the training track with recovery perturbations,
downscale every frame with the daemon's own pre-processing, behaviour-clone the CNN in
`brain/train/model.py`, export ONNX (for the daemon) + safetensors (for LoRA on the robot) +
policy.json, then evaluate the exported ONNX in closed loop through the daemon's inference path
on the training track and on held-out tracks. Seeds are fixed so a rerun reproduces the model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from brain.control.model import FORMAT  # noqa: E402
from brain.control.policy import downscale, load_policy  # noqa: E402
from brain.hardware.sim import collect_teacher_demos, evaluate_closed_loop  # noqa: E402


def collect(track: str, n: int, seed: int, width: int, height: int) -> tuple[np.ndarray, ...]:
    xs = np.empty((n, height, width, 3), np.uint8)
    ys = np.empty((n, 2), np.float32)
    t0 = time.monotonic()
    for i, (img, action) in enumerate(collect_teacher_demos(track, n, width=640, height=480,
                                                            seed=seed)):
        xs[i] = downscale(img, width, height).astype(np.uint8)
        ys[i] = (action.steering, action.throttle)
        if (i + 1) % 2000 == 0:
            print(f"  collected {i + 1}/{n} frames ({time.monotonic() - t0:.0f} s)", flush=True)
    return xs, ys


def train(xs: np.ndarray, ys: np.ndarray, epochs: int, seed: int, batch: int = 64):
    import torch

    from brain.train.model import PolicyNet

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(seed)
    model = PolicyNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    x_all = torch.from_numpy(xs).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW
    y_all = torch.from_numpy(ys)
    weights = torch.tensor([1.0, 0.5])
    n = len(xs)
    for epoch in range(epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(n))
        total = 0.0
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            x = x_all[idx].float() / 255.0
            # mild brightness jitter: robustness to exposure, not to a different track
            x = x * torch.empty(len(idx), 1, 1, 1).uniform_(0.85, 1.15)
            loss = (((model(x.clamp(0, 1)) - y_all[idx]) ** 2) * weights).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / n:.5f}", flush=True)
    return model.eval()


def export(model, out: Path, meta: dict) -> None:
    import torch
    from safetensors.torch import save_file

    from brain.train.model import ARCH, INPUT_HEIGHT, INPUT_WIDTH

    out.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, INPUT_HEIGHT, INPUT_WIDTH)
    torch.onnx.export(model, (dummy,), str(out / "policy.onnx"), input_names=["image"],
                      output_names=["action"], opset_version=18, dynamo=True,
                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                      external_data=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(out / "policy.safetensors"))
    spec = {
        "format": FORMAT,
        "id": meta["id"],
        "version": meta["version"],
        "arch": ARCH,
        "input": {"name": "image", "width": INPUT_WIDTH, "height": INPUT_HEIGHT,
                  "layout": "NCHW", "dtype": "float32", "range": [0.0, 1.0],
                  "colour": "RGB", "resize": "area-average from the camera frame"},
        "output": {"name": "action", "names": ["steering", "throttle"], "range": [-1.0, 1.0]},
        "files": {"onnxruntime": "policy.onnx"},
        "weights": "policy.safetensors",
        "training": meta["training"],
    }
    (out / "policy.json").write_text(json.dumps(spec, indent=2) + "\n")


def evaluate(model_dir: Path, tracks: list[str], seconds: float) -> dict:
    policy = load_policy(str(model_dir))
    results = {}
    for track in tracks:
        r = evaluate_closed_loop(policy.act, track=track, seconds=seconds, seed=1)
        results[track] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
        print(f"  {track:<15} mean|cte| {r['mean_abs_cte']:.3f} m  max {r['max_abs_cte']:.3f} m  "
              f"laps {r['laps']:.2f}  off-track {r['off_track_fraction'] * 100:.1f} %", flush=True)
    return results


def make_replay(out: Path, tracks: list[str], size: int, seed: int) -> None:
    """The rehearsal set that travels with the seed (brain/train/replay.py): teacher frames
    from every track the seed must keep driving, through the same path as recorded frames
    (rendered, JPEG-encoded as the recorder does, decoded as the trainer does)."""
    import simplejpeg

    from brain.train import replay
    from brain.train.data import Samples, decode_frame
    from brain.train.model import INPUT_HEIGHT, INPUT_WIDTH

    per = size // len(tracks)
    images, actions, places = [], [], []
    for track in tracks:
        for img, a in collect_teacher_demos(track, per, width=640, height=480, seed=seed):
            jpeg = simplejpeg.encode_jpeg(img, 75, colorspace="RGB", colorsubsampling="420")
            images.append(decode_frame(jpeg, INPUT_WIDTH, INPUT_HEIGHT))
            actions.append((a.steering, a.throttle))
            places.append(track)
    replay.save(out / replay.REPLAY_FILE,
                Samples(np.stack(images), np.asarray(actions, np.float32), places))
    spec = json.loads((out / "policy.json").read_text())
    spec["replay"] = replay.REPLAY_FILE
    (out / "policy.json").write_text(json.dumps(spec, indent=2) + "\n")
    print(f"wrote {out / replay.REPLAY_FILE}: {len(actions)} samples from {', '.join(tracks)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("brain/models/seed"))
    ap.add_argument("--track", default="oval", help="training track")
    ap.add_argument("--samples", type=int, default=16000)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-seconds", type=float, default=40.0)
    ap.add_argument("--eval-tracks", default="oval,rounded-square,chicane,hairpin,figure-s")
    ap.add_argument("--replay-tracks", default="oval,rounded-square,figure-s",
                    help="tracks the seed must keep driving: its rehearsal set")
    ap.add_argument("--replay-size", type=int, default=512)
    ap.add_argument("--replay-only", action="store_true",
                    help="only (re)make the rehearsal set of the model in --out")
    args = ap.parse_args()
    from brain.train.model import INPUT_HEIGHT, INPUT_WIDTH

    if args.replay_only:
        make_replay(args.out, args.replay_tracks.split(","), args.replay_size, args.seed)
        return 0

    print(f"collecting {args.samples} teacher frames on {args.track}", flush=True)
    xs, ys = collect(args.track, args.samples, args.seed, INPUT_WIDTH, INPUT_HEIGHT)
    print("training", flush=True)
    model = train(xs, ys, args.epochs, args.seed)
    meta = {"id": "seed-v1", "version": "1.0.0",
            "training": {"track": args.track, "samples": args.samples, "epochs": args.epochs,
                         "seed": args.seed, "tool": "tools/train_seed.py"}}
    export(model, args.out, meta)
    print("closed-loop evaluation of the exported ONNX model", flush=True)
    meta["training"]["eval"] = evaluate(args.out, args.eval_tracks.split(","), args.eval_seconds)
    spec = json.loads((args.out / "policy.json").read_text())
    spec["training"] = meta["training"]
    (args.out / "policy.json").write_text(json.dumps(spec, indent=2) + "\n")
    make_replay(args.out, args.replay_tracks.split(","), args.replay_size, args.seed)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
