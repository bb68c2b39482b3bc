"""`brain-cloud export`: a trained run -> a model directory the robot can load.

The directory is what the robot's own trainer writes for a candidate (`write_model_dir`: ONNX
for onnxruntime, the safetensors weights, policy.json derived from the base's), plus the golden
vectors (`golden.f32`, the inputs the bundle format fixes and this model's outputs through the
daemon's own onnxruntime backend) and, when TensorFlow-based tooling is installed, a `.tflite`
for the LiteRT backend. TFLite is an extra: without the tooling the export says so and goes on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from brain.control.model import load_spec
from brain.ota.bundle import GOLDEN_FILE, golden_inputs, write_golden
from brain.train import replay as replay_set
from brain.train.model import PolicyNet
from brain.train.trainer import write_model_dir
from brain_cloud.train import FINAL_WEIGHTS, REPLAY, CloudTrainError

TFLITE_FILE = "policy.tflite"


def export_run(run_dir: Path, out: Path, *, golden_count: int = 4, tflite: str = "auto",
               log: Any = print) -> dict[str, Any]:
    """Write the model directory `out` (new or empty) from a completed run; returns a summary."""
    run_dir, out = Path(run_dir), Path(out)
    record_path = run_dir / "run.json"
    if not record_path.is_file():
        raise CloudTrainError(f"{run_dir}: no run.json; not a brain-cloud training run")
    record = json.loads(record_path.read_text())
    if record.get("status") != "completed" or not (run_dir / FINAL_WEIGHTS).is_file():
        raise CloudTrainError(f"{run_dir}: the run is {record.get('status')!r}, not completed; "
                              "resume it first (brain-cloud train --resume)")
    if out.exists() and any(out.iterdir()):
        raise CloudTrainError(f"{out}: not empty; choose a new directory")
    from safetensors.torch import load_file

    net = PolicyNet()
    net.load_state_dict(load_file(str(run_dir / FINAL_WEIGHTS)))
    net.eval()
    base = Path(record["base"])
    replay = replay_set.load(run_dir / REPLAY) if (run_dir / REPLAY).is_file() else None
    write_model_dir(net, base, out, id_suffix=f"+cloud-{record['run_id']}", replay=replay,
                    training={"run": record["run_id"], "base": record["base_id"],
                              "where": "cloud", "export_origin": record.get("export_origin"),
                              "steps": record.get("step"),
                              "settings": record["settings"]})
    spec = load_spec(out)
    inputs = golden_inputs(golden_count, spec.input_width, spec.input_height)
    outputs = _onnx_outputs(out / spec.files["onnxruntime"], spec.input_name, inputs)
    write_golden(out / GOLDEN_FILE, inputs, outputs)
    summary: dict[str, Any] = {"model_dir": str(out), "id": spec.id, "onnx": spec.files[
        "onnxruntime"], "golden": GOLDEN_FILE, "tflite": None}
    if tflite != "off":
        summary["tflite"] = export_tflite(out, required=tflite == "on", log=log)
    return summary


def _onnx_outputs(onnx_path: Path, input_name: str, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return np.stack([np.asarray(sess.run(None, {input_name: x})[0], np.float32).reshape(-1)[:2]
                     for x in inputs])


TFLITE_PYTHON_ENV = "BRAIN_CLOUD_TFLITE_PYTHON"


def tflite_python() -> str:
    """The Python that runs the converter: TensorFlow pins its own numpy and protobuf, so it
    often lives in a venv of its own (`BRAIN_CLOUD_TFLITE_PYTHON`); this one by default."""
    return os.environ.get(TFLITE_PYTHON_ENV) or sys.executable


def tflite_tool(python: str) -> str | None:
    """The ONNX -> TFLite converter installed for `python`, if any (onnx2tf, which needs
    TensorFlow). Looked up without importing TensorFlow."""
    probe = ("import importlib.util as u, sys; "
             "sys.exit(0 if u.find_spec('onnx2tf') and u.find_spec('tensorflow') else 1)")
    try:
        ok = subprocess.run([python, "-c", probe], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return "onnx2tf" if ok.returncode == 0 else None


def export_tflite(model_dir: Path, *, required: bool, log: Any = print,
                  python: str | None = None) -> str | None:
    """Convert the model's ONNX to `policy.tflite` and name it in policy.json (backend
    `litert`); None when no converter is installed (an error when `required`). The TFLite model
    keeps the ONNX input layout (N x 3 x H x W), which the daemon's LiteRT backend feeds."""
    python = python or tflite_python()
    if tflite_tool(python) is None:
        msg = (f"TFLite skipped: no converter for {python} (pip install onnx2tf tensorflow, "
               f"or point {TFLITE_PYTHON_ENV} at a Python that has them)")
        if required:
            raise CloudTrainError(msg)
        log(msg)
        return None
    spec = load_spec(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        # onnx2tf rewrites (simplifies) its input file in place: it gets a copy.
        source = Path(tmp) / "source.onnx"
        shutil.copyfile(model_dir / spec.files["onnxruntime"], source)
        r = subprocess.run([python, "-m", "onnx2tf", "-i", str(source), "-o", f"{tmp}/out",
                            "-kat", spec.input_name, "-osd"], capture_output=True, text=True,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        made = sorted(Path(tmp, "out").glob("*_float32.tflite"))
        if r.returncode != 0 or not made:
            raise CloudTrainError(f"onnx2tf failed ({r.returncode}): {r.stderr[-2000:]}")
        shutil.copyfile(made[0], model_dir / TFLITE_FILE)
    doc = json.loads((model_dir / "policy.json").read_text())
    doc.setdefault("files", {})["litert"] = TFLITE_FILE
    (model_dir / "policy.json").write_text(json.dumps(doc, indent=2) + "\n")
    log(f"TFLite written by onnx2tf: {TFLITE_FILE}")
    return TFLITE_FILE
