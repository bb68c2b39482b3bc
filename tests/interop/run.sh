#!/usr/bin/env bash
# Interop with real TensorFlow: export synthetic episodes with the main venv (no TensorFlow),
# then read them back in a separate venv holding tensorflow-cpu + tensorflow-datasets.
# The interop venv is created on first use (a large download) and reused afterwards.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
MAIN_PY="${MAIN_PY:-$ROOT/.venv/bin/python}"
VENV="${INTEROP_VENV:-$ROOT/.venv-interop}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import tensorflow_datasets, tensorflow" 2>/dev/null; then
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet tensorflow-cpu tensorflow-datasets
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"
"$MAIN_PY" tests/interop/make_export.py "$WORK/export" "$WORK/expected.json"
TF_CPP_MIN_LOG_LEVEL=2 "$VENV/bin/python" tests/interop/check_tfds.py "$WORK/export" "$WORK/expected.json"

# TFLite: brain-cloud trains on that export and exports with --tflite on, its converter (onnx2tf
# + TensorFlow, which pin their own numpy) in a venv of their own; the daemon's LiteRT backend
# then runs the result there and is compared with onnxruntime.
TFLITE_VENV="${TFLITE_VENV:-$ROOT/.venv-tflite}"
if [ ! -x "$TFLITE_VENV/bin/python" ] || ! "$TFLITE_VENV/bin/python" -c "import onnx2tf, tensorflow, ai_edge_litert, onnxruntime, cryptography" 2>/dev/null; then
    "${PYTHON:-python3}" -m venv "$TFLITE_VENV"
    "$TFLITE_VENV/bin/pip" install --quiet onnx2tf ai-edge-litert onnxruntime cryptography
fi
echo '{"max_steps": 20, "batch": 8, "checkpoint_every": 10}' > "$WORK/train.json"
"$MAIN_PY" -m brain_cloud train --export "$WORK/export" --run-dir "$WORK/run" \
    --config "$WORK/train.json" --json > "$WORK/train.log"
BRAIN_CLOUD_TFLITE_PYTHON="$TFLITE_VENV/bin/python" \
    "$MAIN_PY" -m brain_cloud export "$WORK/run" --out "$WORK/model" --tflite on
TF_CPP_MIN_LOG_LEVEL=2 PYTHONPATH="$ROOT" "$TFLITE_VENV/bin/python" tests/interop/check_tflite.py "$WORK/model"
