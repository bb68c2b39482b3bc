"""The step schema is one table: the recorder's records, validation's types, and the RLDS
features all come from it (brain/rlds/schema.py)."""

from __future__ import annotations

from brain.config import Config
from brain.hardware.sim import SimRobot
from brain.rlds.schema import (
    BOUNDARY_FEATURES,
    LOG_TYPES,
    STEP_FIELDS,
    StepSchema,
    exported_fields,
    step_record,
)
from brain.rlds.tfds_meta import features_json


def test_the_recorders_record_has_exactly_the_schemas_keys_in_order() -> None:
    record = step_record(0, t_mono=1.0, t_wall=2.0, state=[0.0, 1.0], action=(0.1, 0.2),
                         reward=0.5, discount=1.0, is_terminal=False, mode="manual",
                         language_instruction="go", frame=3, frame_skew_ms=1.5, frame_new=True)
    assert list(record) == [f.key for f in STEP_FIELDS] == list(LOG_TYPES)
    for key, value in record.items():
        assert type(value) in LOG_TYPES[key], key


def step_features(doc: dict) -> dict:
    steps = doc["featuresDict"]["features"]["steps"]
    return steps["sequence"]["feature"]["featuresDict"]["features"]


def test_features_are_derived_from_the_robot_spec() -> None:
    robot = SimRobot(Config())
    schema = StepSchema.for_robot(robot.spec)
    assert schema == StepSchema(len(robot.spec.state_names), (480, 640, 3), 2)
    steps = step_features(features_json(schema))
    obs = steps["observation"]["featuresDict"]["features"]
    assert obs["state"]["tensor"]["shape"]["dimensions"] == [str(schema.state_size)]
    assert obs["image"]["image"]["shape"]["dimensions"] == ["480", "640", "3"]
    leaves = {f.feature.split("/")[0] for f in exported_fields()} | set(BOUNDARY_FEATURES)
    assert set(steps) == leaves
    blind = step_features(features_json(StepSchema.for_robot(robot.spec, with_camera=False)))
    assert set(blind["observation"]["featuresDict"]["features"]) == {"state"}
