"""A model directory: the one unit the runtime loads a policy from.

    <dir>/policy.json        spec: id, version, input/output description, files per backend
    <dir>/policy.onnx        the network for onnxruntime (other backends add their own file)
    <dir>/policy.safetensors the weights, kept so the on-device trainer can adapt them

Signed OTA bundles wrap such a directory; the loop only ever sees `ModelSpec` + a backend.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPEC_FILE = "policy.json"
FORMAT = "brain-policy/1"
SEED_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "seed"


class ModelError(RuntimeError):
    """A model directory is missing, malformed or unusable; the message names the file."""


@dataclass(frozen=True)
class ModelSpec:
    directory: Path
    id: str
    version: str
    input_name: str
    input_width: int
    input_height: int
    output_name: str
    output_names: tuple[str, ...]
    files: dict[str, str]  # backend -> file name
    weights: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    def file_for(self, backend: str) -> Path:
        name = self.files.get(backend)
        if not name:
            raise ModelError(f"{self.directory / SPEC_FILE}: no file for backend {backend!r} "
                             f"(has: {', '.join(self.files) or 'none'})")
        path = self.directory / name
        if not path.is_file():
            raise ModelError(f"{path}: model file missing")
        return path


def _need(d: dict[str, Any], key: str, typ: type, where: str) -> Any:
    if key not in d:
        raise ModelError(f"{where}: missing key {key!r}")
    if not isinstance(d[key], typ) or (typ is int and isinstance(d[key], bool)):
        raise ModelError(f"{where}: {key!r} must be {typ.__name__}")
    return d[key]


def load_spec(directory: str | Path) -> ModelSpec:
    directory = Path(directory)
    path = directory / SPEC_FILE
    where = str(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path}: not found (is {directory} a model directory?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ModelError(f"{path}: 'format' must be {FORMAT!r}")
    inp = _need(raw, "input", dict, where)
    out = _need(raw, "output", dict, where)
    files = _need(raw, "files", dict, where)
    w = _need(inp, "width", int, where + " input")
    h = _need(inp, "height", int, where + " input")
    if not (8 <= w <= 1024 and 8 <= h <= 1024):
        raise ModelError(f"{path}: input size {w}x{h} out of range")
    names = tuple(_need(out, "names", list, where + " output"))
    if names != ("steering", "throttle"):
        raise ModelError(f"{path}: output names must be ['steering', 'throttle'], "
                         f"got {list(names)}")
    return ModelSpec(
        directory=directory,
        id=_need(raw, "id", str, where),
        version=str(raw.get("version", "0")),
        input_name=_need(inp, "name", str, where + " input"),
        input_width=w,
        input_height=h,
        output_name=_need(out, "name", str, where + " output"),
        output_names=names,
        files={str(k): str(v) for k, v in files.items()},
        weights=raw.get("weights"),
        extra={k: v for k, v in raw.items()
               if k not in ("format", "id", "version", "input", "output", "files", "weights")},
    )
