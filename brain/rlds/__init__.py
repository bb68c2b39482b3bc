"""Episode recording, storage, validation and RLDS export (issue 3).

The control loop uses `Recorder`/`StepSample`; the CLI, companion and trainer use the functions.
"""

from brain.rlds.export import ExportError, prepare_cloud_export
from brain.rlds.recorder import Recorder, RecorderError, StepSample
from brain.rlds.store import (
    Episode,
    EpisodeBusy,
    EpisodeError,
    EpisodeNotFound,
    delete_episode,
    list_episodes,
    load_episode,
    recover,
)
from brain.rlds.validate import validate_all, validate_episode

__all__ = [
    "Episode", "EpisodeBusy", "EpisodeError", "EpisodeNotFound", "ExportError", "Recorder",
    "RecorderError", "StepSample", "delete_episode", "list_episodes", "load_episode",
    "prepare_cloud_export", "recover", "validate_all", "validate_episode",
]
