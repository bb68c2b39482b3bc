"""The simulated robot: tracks, a kinematic car, a synthetic camera, a scripted teacher.

numpy only, fast to import. `SimRobot` is the daemon's default body; `SimWorld`,
`evaluate_closed_loop` and `collect_teacher_demos` serve training and evaluation offline.
"""

from brain.hardware.sim.car import Car, CarParams, CarState
from brain.hardware.sim.render import Camera, GroundRaster
from brain.hardware.sim.simrobot import STATE_NAMES, SimRobot
from brain.hardware.sim.teacher import Teacher, TeacherParams
from brain.hardware.sim.tracks import TRACK_NAMES, SimParamError, Theme, Track, load_track
from brain.hardware.sim.world import (
    GroundTruth,
    SimWorld,
    collect_teacher_demos,
    evaluate_closed_loop,
    frame_due,
)

__all__ = [
    "STATE_NAMES", "TRACK_NAMES", "Camera", "Car", "CarParams", "CarState", "GroundRaster",
    "GroundTruth", "SimParamError", "SimRobot", "SimWorld", "Teacher", "TeacherParams", "Theme",
    "Track", "collect_teacher_demos", "evaluate_closed_loop", "frame_due", "load_track",
]
