"""`brain-cloud export`: a trained run -> a model directory the robot can load.

The directory is what the robot's own trainer writes for a candidate (`write_model_dir`: ONNX
for onnxruntime, the safetensors weights, policy.json derived from the base's), plus the golden
vectors (`golden.f32`, the inputs the bundle format fixes and this model's outputs through the
daemon's own onnxruntime backend) and, when TensorFlow-based tooling is installed, a `.tflite`
for the LiteRT backend. TFLite is an extra: without the tooling the export says so and goes on.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from brain.control.model import load_spec
from brain.ota.bundle import GOLDEN_FILE, golden_inputs, write_golden
from brain.train.model import PolicyNet
from brain.train.trainer import write_model_dir
from brain_cloud.train import FINAL_WEIGHTS, CloudTrainError

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
    write_model_dir(net, base, out, id_suffix=f"+cloud-{record['run_id']}",
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


def tflite_tool() -> str | None:
    """The installed ONNX -> TFLite converter, if any (onnx2tf, which needs TensorFlow)."""
    if importlib.util.find_spec("onnx2tf") and importlib.util.find_spec("tensorflow"):
        return "onnx2tf"
    return None


def export_tflite(model_dir: Path, *, required: bool, log: Any = print) -> str | None:
    """Convert the model's ONNX to `policy.tflite` and name it in policy.json (backend
    `litert`); None when no converter is installed (an error when `required`)."""
    tool = tflite_tool()
    if tool is None:
        msg = "TFLite skipped: no converter installed (pip install onnx2tf tensorflow)"
        if required:
            raise CloudTrainError(msg)
        log(msg)
        return None
    spec = load_spec(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, "-m", "onnx2tf", "-i",
                            str(model_dir / spec.files["onnxruntime"]), "-o", tmp,
                            "-kat", spec.input_name, "-osd"], capture_output=True, text=True)
        made = sorted(Path(tmp).glob("*_float32.tflite"))
        if r.returncode != 0 or not made:
            raise CloudTrainError(f"onnx2tf failed ({r.returncode}): {r.stderr[-2000:]}")
        shutil.copyfile(made[0], model_dir / TFLITE_FILE)
    doc = json.loads((model_dir / "policy.json").read_text())
    doc.setdefault("files", {})["litert"] = TFLITE_FILE
    (model_dir / "policy.json").write_text(json.dumps(doc, indent=2) + "\n")
    return TFLITE_FILE
