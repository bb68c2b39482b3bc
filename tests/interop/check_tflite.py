"""In the TFLite venv (TensorFlow, onnx2tf, ai-edge-litert, onnxruntime; brain on PYTHONPATH):
run the model directory that `brain-cloud export --tflite on` wrote through the daemon's own
LiteRT backend and its onnxruntime backend, and compare. Usage: check_tflite.py MODEL_DIR

Tolerance: 1e-4 on the actions (in -1..1). Both run the same float32 graph; what differs is
the kernels' summation order (measured here: ~1e-7)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from brain.control.model import load_spec
from brain.control.policy import LiteRtBackend, OnnxRuntimeBackend
from brain.ota.bundle import GOLDEN_FILE, read_golden

TOLERANCE = 1e-4


def main(model_dir: Path) -> None:
    spec = load_spec(model_dir)
    assert spec.files.get("litert") == "policy.tflite", spec.files
    litert, ort = LiteRtBackend(spec), OnnxRuntimeBackend(spec)
    rng = np.random.default_rng(0)
    inputs = [rng.random((1, 3, spec.input_height, spec.input_width), dtype=np.float32)
              for _ in range(32)]
    golden_in, golden_out = read_golden(model_dir / GOLDEN_FILE, 4, spec.input_width,
                                        spec.input_height)
    # The ONNX shipped is the one the golden vectors came from (onnx2tf rewrites the file it
    # converts; the export hands it a copy).
    shipped = max(float(np.abs(ort.run(x).reshape(-1)[:2] - y).max())
                  for x, y in zip(golden_in, golden_out, strict=True))
    assert shipped <= 1e-6, shipped
    worst = max(float(np.abs(litert.run(x) - ort.run(x)).max()) for x in inputs)
    worst_golden = max(float(np.abs(litert.run(x).reshape(-1)[:2] - y).max())
                       for x, y in zip(golden_in, golden_out, strict=True))
    assert worst <= TOLERANCE and worst_golden <= TOLERANCE, (worst, worst_golden)
    print(f"tflite ok: the LiteRT backend matches onnxruntime within {worst:.2g} "
          f"(golden vectors {worst_golden:.2g}; tolerance {TOLERANCE})")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
