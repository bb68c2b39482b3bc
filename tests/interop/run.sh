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
