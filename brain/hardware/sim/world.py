"""The offline simulated world: track + car + camera + teacher, no threads, no clock.

Training and evaluation step it as fast as the CPU allows; `SimRobot` wraps the same world for
the daemon. `evaluate_closed_loop` is the promotion gate's measurement; `collect_teacher_demos`
makes behaviour-cloning data with recovery examples.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from brain.hardware.robot import Action
from brain.hardware.sim.car import Car, CarParams, CarState
from brain.hardware.sim.render import Camera, GroundRaster
from brain.hardware.sim.teacher import Teacher
from brain.hardware.sim.tracks import SimParamError, Theme, Track, load_track


@dataclass(frozen=True)
class GroundTruth:
    cte: float  # m, + = left of the centreline
    heading_error: float  # rad, + = pointing left of the track direction
    progress_laps: float  # laps since reset, continuous across the start line (- = backwards)
    off_track: bool  # |cte| > width / 2
    speed: float  # m/s
    x: float
    y: float
    yaw: float

    def as_dict(self) -> dict[str, float]:
        # By hand rather than dataclasses.asdict: this runs every control tick, asdict is slow.
        return {"cte": self.cte, "heading_error": self.heading_error,
                "progress_laps": self.progress_laps, "off_track": float(self.off_track),
                "speed": self.speed, "x": self.x, "y": self.y, "yaw": self.yaw}


_RASTERS: dict[tuple[str, float, Theme], GroundRaster] = {}
_MAX_RASTERS = 8  # about 10 MB each


def _raster_for(track: Track) -> GroundRaster:
    """Painting a track takes a few hundred ms; worlds that look the same share one raster."""
    key = (track.name, track.width, track.theme)
    raster = _RASTERS.get(key)
    if raster is None:
        if len(_RASTERS) >= _MAX_RASTERS:
            _RASTERS.pop(next(iter(_RASTERS)))  # oldest first
        raster = _RASTERS[key] = GroundRaster(track)
    return raster


def frame_due(tick: int, hz: int, fps: int) -> bool:
    """Whether control tick `tick` (0, 1, ...) takes a camera frame: frames land on the ticks
    where floor(tick * fps / hz) steps, so they average exactly `fps` (capped at one a tick)."""
    return (tick * fps) // hz != ((tick - 1) * fps) // hz


class SimWorld:
    """One car on one track. `reset`, then alternate `step` (physics) and `render` (camera)."""

    def __init__(self, track: str = "oval", *, road_width_m: float = 0.0, road_colour: str = "",
                 line_colour: str = "", ground_colour: str = "", lighting: float = 1.0,
                 max_speed_mps: float = 2.0, seed: int = 0,
                 start_noise: bool = True, track_file: str = "") -> None:
        if not max_speed_mps > 0:
            raise SimParamError("max_speed_mps", f"{max_speed_mps!r} must be positive")
        self.track: Track = load_track(track, road_width_m, road_colour, line_colour,
                                       ground_colour, lighting, track_file)
        # Absolute in episode metadata, so a trainer started elsewhere evaluates the same file.
        self.track_file = os.path.abspath(track_file) if track_file else ""
        self.overrides = {"road_colour": road_colour, "line_colour": line_colour,
                          "ground_colour": ground_colour, "lighting": lighting}
        self.car = Car(CarParams(max_speed_mps=max_speed_mps))
        self.teacher = Teacher(self.track, self.car.params)
        self.seed = seed
        self.start_noise = start_noise
        self._raster: GroundRaster | None = None
        self._cameras: dict[tuple[int, int], Camera] = {}
        self.reset(seed)

    @classmethod
    def from_profile(cls, profile: Any, **kwargs: Any) -> SimWorld:
        """From a `brain.config.SimProfile` (duck-typed to keep this module config-free)."""
        return cls(profile.track, road_width_m=profile.road_width_m,
                   road_colour=profile.road_colour, line_colour=profile.line_colour,
                   ground_colour=profile.ground_colour, lighting=profile.lighting,
                   max_speed_mps=profile.max_speed_mps, seed=profile.seed,
                   track_file=profile.track_file, **kwargs)

    # -- episode ---------------------------------------------------------------------------------

    def reset(self, seed: int | None = None, s: float | None = None, offset: float | None = None,
              yaw_offset: float | None = None) -> GroundTruth:
        """Place the car, at rest, at arc length `s` (default: the start line), `offset` metres
        left of the centreline, `yaw_offset` rad off the track direction. Unset values get
        small seeded noise (when `start_noise`), so episodes differ but replay exactly."""
        rng = np.random.default_rng(self.seed if seed is None else seed)
        noise = 1.0 if self.start_noise else 0.0
        if s is None:
            s = 0.0
        if offset is None:
            offset = noise * float(rng.uniform(-0.1, 0.1)) * self.track.width
        if yaw_offset is None:
            yaw_offset = noise * math.radians(float(rng.uniform(-3.0, 3.0)))
        x, y, h = self.track.pose_at(s, offset)
        self.car.state = CarState(x=x, y=y, yaw=h + yaw_offset)
        self._index = self.track.index_at(s)
        proj = self.track.project(x, y, self._index)
        self._index = proj.index
        self._s_last = proj.s
        self._travel = 0.0
        self._truth = self._measure(proj)
        return self._truth

    def step(self, action: Action, dt: float) -> GroundTruth:
        """Advance the physics by `dt` seconds under `action`; cheap (tens of microseconds)."""
        st = self.car.step(action, dt)
        proj = self.track.project(st.x, st.y, self._index)
        self._index = proj.index
        half = self.track.length / 2
        self._travel += (proj.s - self._s_last + half) % self.track.length - half
        self._s_last = proj.s
        self._truth = self._measure(proj)
        return self._truth

    def _measure(self, proj: Any) -> GroundTruth:
        st = self.car.state
        herr = (st.yaw - proj.heading + math.pi) % (2 * math.pi) - math.pi
        return GroundTruth(cte=proj.cte, heading_error=herr,
                           progress_laps=self._travel / self.track.length,
                           off_track=abs(proj.cte) > self.track.width / 2, speed=st.speed,
                           x=st.x, y=st.y, yaw=st.yaw)

    def ground_truth(self) -> GroundTruth:
        return self._truth

    def teacher_action(self) -> Action:
        return self.teacher.action(self.car.state, self._index)

    # -- camera ----------------------------------------------------------------------------------

    def camera(self, width: int = 640, height: int = 480) -> Camera:
        """The camera for a resolution, built (rays precomputed) on first use and cached."""
        if self._raster is None:
            self._raster = _raster_for(self.track)
        key = (width, height)
        if key not in self._cameras:
            self._cameras[key] = Camera(self._raster, width, height)
        return self._cameras[key]

    def render(self, width: int = 640, height: int = 480) -> np.ndarray:
        """What the car's camera sees now: RGB uint8 (height, width, 3)."""
        return self.camera(width, height).render(*self.car.camera_pose())

    def params(self) -> dict[str, Any]:
        """The simulator parameters, for episode metadata."""
        th = self.track.theme
        hexc = "#{:02x}{:02x}{:02x}".format
        return {"track": self.track.name, "track_file": self.track_file,
                "road_width_m": self.track.width,
                "road_colour": hexc(*th.road), "line_colour": hexc(*th.line),
                "ground_colour": hexc(*th.ground), "centre_dashes": th.dashes is not None,
                "lighting": th.lighting, "lighting_multiplier": self.overrides["lighting"],
                "max_speed_mps": self.car.params.max_speed_mps, "seed": self.seed,
                "track_length_m": self.track.length}


def _as_action(a: Action | tuple[float, float]) -> Action:
    return a if isinstance(a, Action) else Action(float(a[0]), float(a[1]))


def evaluate_closed_loop(policy_fn: Callable[[np.ndarray], Action], track: str = "oval",
                         seconds: float = 30.0, hz: int = 50, fps: int = 30, width: int = 640,
                         height: int = 480, seed: int = 0, max_throttle: float = 1.0,
                         stop_on_off_track: bool = False, world: SimWorld | None = None,
                         **world_kwargs: Any) -> dict[str, Any]:
    """Drive `policy_fn` (image -> Action) in closed loop, as the daemon would: a frame on the
    `fps` schedule of the `hz` ticks, the action from a frame applied from the next tick (the
    daemon sees a frame one tick after its capture) and held until the next frame's action.
    `world` runs on a world already built (and reset) instead of a new one on `track`."""
    if world is None:
        world = SimWorld(track, seed=seed, **world_kwargs)
    dt = 1.0 / hz
    cam = world.camera(width, height)
    action, pending = Action(0.0, 0.0), None
    n_ticks = round(seconds * hz)
    abs_cte: list[float] = []
    off_ticks = off_events = frames = 0
    was_off = False
    truth = world.ground_truth()
    for tick in range(n_ticks):
        if pending is not None:
            action, pending = pending, None
        if frame_due(tick, hz, fps):
            a = _as_action(policy_fn(cam.render(*world.car.camera_pose())))
            pending = Action(max(-1.0, min(1.0, a.steering)), min(max_throttle, a.throttle))
            frames += 1
        truth = world.step(action, dt)
        abs_cte.append(abs(truth.cte))
        if truth.off_track:
            off_ticks += 1
            off_events += not was_off
        was_off = truth.off_track
        if was_off and stop_on_off_track:
            break
    ticks = len(abs_cte)
    return {"track": world.track.name, "seconds": ticks * dt, "ticks": ticks, "frames": frames,
            "mean_abs_cte": float(np.mean(abs_cte)), "max_abs_cte": float(np.max(abs_cte)),
            "laps": truth.progress_laps, "laps_completed": max(0, math.floor(truth.progress_laps)),
            "off_track_fraction": off_ticks / n_ticks,
            "off_track_events": off_events, "completed": off_ticks == 0 and ticks == n_ticks,
            "road_width_m": world.track.width}


def collect_teacher_demos(track: str = "oval", n_steps: int = 1000, *, hz: int = 50,
                          ticks_per_sample: int = 2, width: int = 160, height: int = 120,
                          seed: int = 0, noise: float = 0.5, perturb_rate_hz: float = 0.7,
                          episode_s: float = 20.0, return_truth: bool = False,
                          **world_kwargs: Any) -> Iterator[tuple[Any, ...]]:
    """Yield `n_steps` (image, teacher action) pairs for behaviour cloning; with
    `return_truth`, (image, action, GroundTruth) triples.

    DAgger-style perturbation: now and then (`perturb_rate_hz`) the car executes the teacher's
    steering plus an offset of up to `noise` for 0.2-0.6 s, while the label stays the teacher's
    action for the state actually reached, so the data show how to recover from drift. A
    perturbation ends early when the car nears the road edge; episodes restart every
    `episode_s` at a random place and pose on the track, so the whole loop is covered.
    """
    rng = np.random.default_rng(seed)
    world = SimWorld(track, seed=seed, **world_kwargs)
    dt = 1.0 / hz
    cam = world.camera(width, height)
    half = world.track.width / 2

    def restart() -> None:
        world.reset(s=float(rng.uniform(0, world.track.length)),
                    offset=float(rng.uniform(-0.4, 0.4)) * half,
                    yaw_offset=math.radians(float(rng.uniform(-12, 12))))

    restart()
    episode_ticks, offset, perturb_left, tick = round(episode_s * hz), 0.0, 0, 0
    produced = 0
    while produced < n_steps:
        label = world.teacher_action()
        truth = world.ground_truth()
        if tick % ticks_per_sample == 0:
            image = cam.render(*world.car.camera_pose())
            yield (image, label, truth) if return_truth else (image, label)
            produced += 1
        if perturb_left <= 0 and rng.random() < perturb_rate_hz * dt:
            offset = float(rng.uniform(-noise, noise))
            perturb_left = round(float(rng.uniform(0.2, 0.6)) * hz)
        if abs(truth.cte) > 0.6 * half:
            perturb_left = 0  # let the teacher bring it back
        executed = label
        if perturb_left > 0:
            executed = Action(max(-1.0, min(1.0, label.steering + offset)), label.throttle)
            perturb_left -= 1
        truth = world.step(executed, dt)
        tick += 1
        if truth.off_track or tick % episode_ticks == 0:
            restart()
