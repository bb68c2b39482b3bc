"""The step schema, defined once.

A step is one control tick while recording. `STEP_FIELDS` lists every key the recorder writes
into the step log, the JSON types validation accepts for it, and the RLDS feature an export
makes of it (name under `steps/`, TFDS dtype, and how the log column becomes that feature).
`StepSchema` adds what depends on the body (`RobotSpec`: state size, action names, image
shape) and derives from the one table: the recorder's record (`step_record`), validation's type
checks (`LOG_TYPES`), TFDS' `features.json` (`brain.rlds.tfds_meta`) and the export's encoding
(`brain.rlds.export`). A new per-step field is added here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from brain.hardware.robot import RobotSpec

# How a log column becomes its RLDS feature.
VECTOR = "vector"  # list of floats per step -> float32 [n]
FLOAT = "float"  # number -> float32
FLOAT_OR_ZERO = "float_or_zero"  # number or null (no frame) -> float32, null as 0
NS = "ns"  # seconds -> int64 nanoseconds
BOOL = "bool"  # JSON bool -> TFDS bool (int64 on the wire)
TEXT = "text"  # str -> TFDS Text (UTF-8 bytes)


@dataclass(frozen=True)
class StepField:
    key: str  # key in the step log's JSON record
    log_types: tuple[type, ...]  # exact JSON types validation accepts
    feature: str | None = None  # RLDS feature under steps/; None: kept in the log only
    encoding: str = ""  # one of the encodings above
    free_text: bool = False  # may carry personal data: scrubbed by an anonymised export

    @property
    def dtype(self) -> str:
        return {VECTOR: "float32", FLOAT: "float32", FLOAT_OR_ZERO: "float32", NS: "int64",
                BOOL: "bool", TEXT: "text"}[self.encoding]


_NUMBER = (int, float)
STEP_FIELDS: tuple[StepField, ...] = (
    StepField("i", (int,)),  # ordinal in the episode
    StepField("t_mono", _NUMBER, "monotonic_ns", NS),  # time.monotonic() of the observation
    StepField("t_wall", _NUMBER, "timestamp_ns", NS),  # time.time() at the same moment
    StepField("state", (list,), "observation/state", VECTOR),  # RobotSpec.state_names
    StepField("action", (list,), "action", VECTOR),  # as applied, after clamping
    StepField("reward", _NUMBER, "reward", FLOAT),
    StepField("discount", _NUMBER, "discount", FLOAT),
    StepField("is_terminal", (bool,), "is_terminal", BOOL),
    StepField("mode", (str,), "mode", TEXT),  # where the action came from (manual, policy...)
    StepField("language_instruction", (str,), "language_instruction", TEXT, free_text=True),
    StepField("frame", (int,)),  # ordinal of the frame record; exported as observation/image
    StepField("frame_skew_ms", (int, float, type(None)), "frame_skew_ms", FLOAT_OR_ZERO),
    StepField("frame_new", (bool,), "frame_new", BOOL),  # first step to use this frame
)
LOG_TYPES: dict[str, tuple[type, ...]] = {f.key: f.log_types for f in STEP_FIELDS}
# RLDS features that no log key holds: the episode boundaries.
BOUNDARY_FEATURES = ("is_first", "is_last")
IMAGE_FEATURE = "observation/image"


@dataclass(frozen=True)
class StepSchema:
    """The sizes that depend on the body: from its RobotSpec, or read off an episode."""

    state_size: int
    image_shape: tuple[int, int, int] | None  # None: a body without a camera
    action_size: int = 2

    @classmethod
    def for_robot(cls, spec: RobotSpec, with_camera: bool = True) -> StepSchema:
        shape = tuple(spec.image_shape) if with_camera else None
        return cls(len(spec.state_names), shape, len(spec.action_names))  # type: ignore[arg-type]


def step_record(index: int, *, t_mono: float, t_wall: float, state: Any,
                action: tuple[float, float], reward: float, discount: float, is_terminal: bool,
                mode: str, language_instruction: str, frame: int, frame_skew_ms: float | None,
                frame_new: bool) -> dict[str, Any]:
    """One step log record, keys in STEP_FIELDS order (the recorder's only writer; a test
    holds the two together)."""
    return {
        "i": index, "t_mono": t_mono, "t_wall": t_wall,
        "state": np.asarray(state, dtype=np.float32).tolist(),
        "action": [float(action[0]), float(action[1])],
        "reward": float(reward), "discount": float(discount),
        "is_terminal": bool(is_terminal), "mode": str(mode),
        "language_instruction": str(language_instruction), "frame": frame,
        "frame_skew_ms": frame_skew_ms, "frame_new": frame_new,
    }


def exported_fields() -> tuple[StepField, ...]:
    return tuple(f for f in STEP_FIELDS if f.feature is not None)
