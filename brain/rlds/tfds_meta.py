"""TFDS metadata for an RLDS export: `features.json` and `dataset_info.json`, written as the JSON
form of TFDS' own protos (what `FeatureConnector.save_config` and `DatasetInfo` write), so
`tfds.builder_from_directory` reads the dataset without our code. Tests compare `features.json`
with what TFDS itself produces for the same FeaturesDict.
"""

from __future__ import annotations

from typing import Any

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


# Per-step fields beyond the observation, in RLDS naming: (name, dtype, shape) or Text.
STEP_SCALARS: tuple[tuple[str, str], ...] = (
    ("reward", "float32"), ("discount", "float32"), ("is_first", "bool"), ("is_last", "bool"),
    ("is_terminal", "bool"), ("timestamp_ns", "int64"), ("monotonic_ns", "int64"),
    ("frame_skew_ms", "float32"), ("frame_new", "bool"),
)
STEP_TEXTS = ("language_instruction", "mode")
EPISODE_TEXTS = ("episode_id", "robot_id", "robot_profile", "model_id", "operator", "status",
                 "state_names", "simulator", "metadata_json")
EPISODE_INTS = ("start_time_ns", "end_time_ns")


def features_json(state_dim: int, image_shape: tuple[int, int, int] | None) -> dict[str, Any]:
    obs: dict[str, Any] = {"state": _tensor("float32", (state_dim,))}
    if image_shape is not None:
        obs["image"] = _image(image_shape)
    step: dict[str, Any] = {"observation": _dict(obs), "action": _tensor("float32", (2,))}
    step.update({name: _tensor(dtype) for name, dtype in STEP_SCALARS})
    step.update({name: _text() for name in STEP_TEXTS})
    meta: dict[str, Any] = {name: _text() for name in EPISODE_TEXTS}
    meta.update({name: _tensor("int64") for name in EPISODE_INTS})
    return _dict({
        "steps": {"pythonClassName": _DATASET,
                  "sequence": {"feature": _dict(step), "length": "-1"}},
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
