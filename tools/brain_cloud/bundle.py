"""`brain-cloud bundle`: a signed bundle per `ota/SPEC.md`, built by `brain.ota.bundle` (the
robot's verifier and this builder share one implementation of the format)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from brain.ota import keys
from brain.ota.bundle import BuildOptions, build_bundle


def default_release() -> int:
    """A monotonic release counter without a server to count: seconds since the epoch."""
    return int(time.time())


def bundle_model(model_dir: Path, key: Path, out_dir: Path, *, version: str = "",
                 release: int = 0, name: str = "policy", description: str = "",
                 profiles: tuple[str, ...] = ("sim", "pi5-donkey"),
                 targets: tuple[str, ...] = ()) -> tuple[Path, dict[str, Any]]:
    """Sign `model_dir` with the publisher key `key`; returns (bundle path, manifest)."""
    release = release or default_release()
    version = version or f"1.0.{release}"
    private = keys.load_private(key)
    backends = ("onnxruntime", "litert") if (model_dir / "policy.tflite").is_file() \
        else ("onnxruntime",)
    opts = BuildOptions(version=version, release=release, name=name, origin="publisher",
                        profiles=profiles, backends=backends, description=description,
                        targets=targets)
    bundle_id = f"{name}-{version}-r{release}".lower()
    out = Path(out_dir) / f"{bundle_id}.bundle"
    manifest = build_bundle(model_dir, private, opts, out)
    return out, manifest
