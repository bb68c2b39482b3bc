"""TFDS metadata for an RLDS export: `features.json` and `dataset_info.json`, written as the JSON
form of TFDS' own protos (what `FeatureConnector.save_config` and `DatasetInfo` write), so
`tfds.builder_from_directory` reads the dataset without our code. Tests compare `features.json`
with what TFDS itself produces for the same FeaturesDict.
"""

from __future__ import annotations

from typing import Any

from brain.rlds.schema import (
    BOUNDARY_FEATURES,
    IMAGE_FEATURE,
    VECTOR,
    StepField,
    StepSchema,
    exported_fields,
)

_FD = "tensorflow_datasets.core.features.features_dict.FeaturesDict"
_TENSOR = "tensorflow_datasets.core.features.tensor_feature.Tensor"
_TEXT = "tensorflow_datasets.core.features.text_feature.Text"
_IMAGE = "tensorflow_datasets.core.features.image_feature.Image"
_DATASET = "tensorflow_datasets.core.features.dataset_feature.Dataset"
SHARD_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def _dict(features: dict[str, Any]) -> dict[str, Any]:
    return {"pythonClassName": _FD, "featuresDict": {"features": features}}


def _tensor(dtype: str, shape: tuple[int, ...] = ()) -> dict[str, Any]:
    dims = {"dimensions": [str(d) for d in shape]} if shape else {}
    return {"pythonClassName": _TENSOR,
            "tensor": {"shape": dims, "dtype": dtype, "encoding": "none"}}


def _text() -> dict[str, Any]:
    return {"pythonClassName": _TEXT, "text": {}}


def _image(shape: tuple[int, int, int]) -> dict[str, Any]:
    return {"pythonClassName": _IMAGE, "image": {
        "shape": {"dimensions": [str(d) for d in shape]}, "dtype": "uint8",
        "encodingFormat": "jpeg"}}


EPISODE_TEXTS = ("episode_id", "robot_id", "robot_profile", "model_id", "operator", "status",
                 "state_names", "simulator", "metadata_json")
EPISODE_INTS = ("start_time_ns", "end_time_ns")


def _feature(f: StepField, schema: StepSchema) -> dict[str, Any]:
    if f.dtype == "text":
        return _text()
    if f.encoding == VECTOR:
        size = schema.state_size if f.key == "state" else schema.action_size
        return _tensor(f.dtype, (size,))
    return _tensor(f.dtype)


def features_json(schema: StepSchema) -> dict[str, Any]:
    """TFDS' FeaturesDict for the episodes, derived from the step schema."""
    step: dict[str, Any] = {}
    for f in exported_fields():
        assert f.feature is not None
        *parents, leaf = f.feature.split("/")
        node = step
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = _feature(f, schema)
    for name in BOUNDARY_FEATURES:
        step[name] = _tensor("bool")
    if schema.image_shape is not None:
        parent, leaf = IMAGE_FEATURE.split("/")
        step.setdefault(parent, {})[leaf] = _image(schema.image_shape)

    def nest(node: dict[str, Any]) -> dict[str, Any]:
        return _dict({k: nest(v) if "pythonClassName" not in v else v for k, v in node.items()})

    meta: dict[str, Any] = {name: _text() for name in EPISODE_TEXTS}
    meta.update({name: _tensor("int64") for name in EPISODE_INTS})
    return _dict({
        "steps": {"pythonClassName": _DATASET,
                  "sequence": {"feature": nest(step), "length": "-1"}},
        "episode_metadata": _dict(meta),
    })


def dataset_info_json(name: str, shard_lengths: list[int], num_bytes: int,
                      description: str, version: str = "1.0.0") -> dict[str, Any]:
    return {
        "name": name, "version": version, "description": description,
        "fileFormat": "tfrecord", "moduleName": "brain.rlds.export",
        "releaseNotes": {version: "Exported by brain (edge runtime)."},
        "splits": [{"name": "train", "shardLengths": [str(n) for n in shard_lengths],
                    "numBytes": str(num_bytes), "filepathTemplate": SHARD_TEMPLATE}],
    }


def shard_name(name: str, index: int, count: int) -> str:
    return f"{name}-train.tfrecord-{index:05d}-of-{count:05d}"
