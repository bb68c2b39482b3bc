"""The simulator: track geometry and ground truth, car kinematics, camera, teacher, SimRobot.

Nothing here is mocked: the simulator is itself the emulation of the robot, so tests drive the
real classes and check them against hand-computed geometry.
"""

from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np
import pytest

from brain.config import ConfigError, SimProfile, load_config
from brain.hardware.robot import Action, RobotError
from brain.hardware.sim import (
    STATE_NAMES,
    TRACK_NAMES,
    Car,
    CarParams,
    CarState,
    SimParamError,
    SimRobot,
    SimWorld,
    collect_teacher_demos,
    evaluate_closed_loop,
    frame_due,
    load_track,
)
from brain.hardware.sim.tracks import LAYOUTS

# -- tracks and ground truth ---------------------------------------------------------------------


def test_track_names_are_the_configs_choices():
    f = {f.name: f for f in dataclasses.fields(SimProfile)}["track"]
    assert set(f.metadata["choices"]) == set(TRACK_NAMES)


@pytest.mark.parametrize("name", TRACK_NAMES)
def test_tracks_are_closed_even_and_drivable(name):
    tr = load_track(name)
    steps = np.hypot(*np.diff(np.vstack([tr.xy, tr.xy[:1]]), axis=0).T)
    assert steps.max() < 1.5 * tr.ds and steps.min() > 0.5 * tr.ds  # closed, evenly sampled
    assert 0.6 <= tr.width <= 1.0
    min_radius = 1 / np.abs(tr.curvature).max()
    car_min_radius = CarParams().wheelbase_m / math.tan(CarParams().max_wheel_angle_rad)
    assert min_radius > 1.4 * car_min_radius
    # Counter-clockwise: the signed area of the loop is positive.
    x, y = tr.xy.T
    assert 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) > 0


def test_track_geometries_differ():
    curv = {n: np.sort(np.abs(load_track(n).curvature))[::-1][:200].mean() for n in TRACK_NAMES}
    assert len({round(c, 2) for c in curv.values()}) == len(TRACK_NAMES)
    assert any((load_track(n).curvature < -0.3).any() for n in TRACK_NAMES)  # some S-bends


def test_ground_truth_on_known_poses_of_the_oval():
    # The oval starts at (0, 0) heading +x along a 4 m straight, then a 1.5 m radius left turn
    # centred at (4, 1.5). Width 0.9 m.
    tr = load_track("oval")
    p = tr.project(1.0, 0.2)
    assert p.cte == pytest.approx(0.2, abs=1e-3) and p.s == pytest.approx(1.0, abs=1e-3)
    assert tr.project(2.0, -0.3).cte == pytest.approx(-0.3, abs=1e-3)
    # On the curve, 0.3 m inside (left): 60 degrees into the turn.
    a = math.radians(60)
    x, y = 4 + 1.2 * math.sin(a), 1.5 - 1.2 * math.cos(a)
    p = tr.project(x, y)
    assert p.cte == pytest.approx(0.3, abs=2e-3)
    assert p.s == pytest.approx(4 + 1.5 * a, abs=2e-3)
    assert p.heading == pytest.approx(a, abs=1e-2)

    w = SimWorld("oval", start_noise=False)
    g = w.reset(s=1.0, offset=0.0, yaw_offset=0.1)
    assert g.heading_error == pytest.approx(0.1, abs=1e-3) and not g.off_track
    assert g.progress_laps == 0.0 and g.speed == 0.0
    assert w.reset(s=1.0, offset=0.44).off_track is False
    assert w.reset(s=1.0, offset=-0.46).off_track is True


def test_progress_is_continuous_across_the_start_line_and_counts_backwards():
    w = SimWorld("oval", start_noise=False)
    w.reset(s=w.track.length - 0.5, offset=0.0, yaw_offset=0.0)
    last, jumps = 0.0, []
    for _ in range(150):
        g = w.step(Action(0.0, 0.5), 0.02)
        jumps.append(g.progress_laps - last)
        last = g.progress_laps
    travelled = g.x - (-0.5)  # straight along +x through the start line at x = 0
    assert g.progress_laps == pytest.approx(travelled / w.track.length, abs=1e-3)
    assert max(jumps) < 0.02 / w.track.length * 1.01 * 2.0  # no jump at the line
    for _ in range(300):
        g = w.step(Action(0.0, -0.5), 0.02)
    assert g.progress_laps < 0 and g.speed < 0


# -- car -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("steering", [0.3, 0.6, -1.0])
def test_turning_radius_matches_bicycle_geometry(steering):
    car = Car(CarParams(), CarState())
    for _ in range(200):  # let the servo and motor lags settle
        car.step(Action(steering, 0.4), 0.01)
    pts = []
    for _ in range(400):
        st = car.step(Action(steering, 0.4), 0.01)
        pts.append((st.x, st.y))
    p = np.array(pts)
    # Least-squares circle through the path (Kasa fit), independent of the model's formula.
    a = np.column_stack([2 * p[:, 0], 2 * p[:, 1], np.ones(len(p))])
    cx, cy, c = np.linalg.lstsq(a, (p**2).sum(axis=1), rcond=None)[0]
    radius = math.sqrt(c + cx**2 + cy**2)
    expected = car.params.wheelbase_m / math.tan(abs(steering) * car.params.max_wheel_angle_rad)
    assert radius == pytest.approx(expected, rel=1e-3)
    # Positive steering turns right (clockwise: negative yaw rate).
    assert math.copysign(1, st.yaw_rate) == -math.copysign(1, steering)


def test_speed_follows_throttle_with_lag_and_reverses():
    car = Car(CarParams(max_speed_mps=2.0))
    st = car.step(Action(0.0, 0.5), car.params.speed_tau_s)
    assert st.speed == pytest.approx(1.0 * (1 - math.exp(-1)), rel=1e-6)
    for _ in range(100):
        st = car.step(Action(0.0, -1.0), 0.05)
    assert st.speed == pytest.approx(-2.0, rel=1e-3) and st.x < 0
    with pytest.raises(ValueError, match="dt"):
        car.step(Action(), 0.0)


# -- camera --------------------------------------------------------------------------------------


def _patch(img, rows, cols):
    return img[rows, cols].reshape(-1, 3).mean(axis=0)


def test_render_shape_dtype_and_resolution():
    w = SimWorld("oval")
    for width, height in ((640, 480), (160, 120), (97, 61)):
        img = w.render(width, height)
        assert img.shape == (height, width, 3) and img.dtype == np.uint8
        assert img.flags.c_contiguous


def test_road_is_in_the_middle_when_centred_and_absent_off_road():
    w = SimWorld("oval", start_noise=False)
    theme = w.track.theme
    w.reset(s=0.5, offset=0.0, yaw_offset=0.0)
    img = w.render(160, 120).astype(float)
    road = _patch(img, slice(100, 120), slice(50, 70))  # below the centre, left of the dashes
    assert np.abs(road - theme.road).max() < 25
    # Looking along the straight, the road narrows to the horizon: far off to the side is grass.
    cam = w.camera(160, 120)
    side = _patch(img, slice(cam.horizon + 8, cam.horizon + 14), slice(0, 10))
    assert side[1] - max(side[0], side[2]) > 30  # green grass, if hazy at that distance
    w.reset(s=0.5, offset=-2.5, yaw_offset=0.0)  # 2.5 m right of the centreline, on the grass
    off = _patch(w.render(160, 120).astype(float), slice(100, 120), slice(50, 70))
    assert np.abs(off - theme.ground).max() < 35


def test_lighting_and_colour_overrides_change_the_picture():
    def centre(**kw):
        w = SimWorld("oval", start_noise=False, **kw)
        w.reset(s=0.5, offset=0.0, yaw_offset=0.0)
        return w.render(160, 120).astype(float)

    base, dim = centre(), centre(lighting=0.5)
    assert dim.mean() == pytest.approx(0.5 * base.mean(), rel=0.05)
    red = _patch(centre(road_colour="#e01010"), slice(100, 120), slice(50, 70))
    assert red[0] > 150 and red[1] < 60 and red[2] < 60
    green_lines = centre(line_colour="#00ff00")
    assert (green_lines[..., 1] - green_lines[..., 0] > 150).sum() > 50
    sand = centre(ground_colour="#c8b478")
    assert np.abs(sand - base).max() > 50


def test_different_tracks_look_different():
    views = {}
    for name in TRACK_NAMES:
        w = SimWorld(name, start_noise=False)
        w.reset(s=0.5, offset=0.0, yaw_offset=0.0)
        views[name] = w.render(80, 60).astype(float)
    names = list(views)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(views[a] - views[b]).mean() > 20, (a, b)


# -- teacher -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TRACK_NAMES)
def test_teacher_laps_every_track_without_leaving_the_road(name):
    """Physics only, no rendering: 1.2 laps from a noisy start, never off the road."""
    w = SimWorld(name, seed=3)
    half = w.track.width / 2
    worst, ticks = 0.0, 0
    while w.ground_truth().progress_laps < 1.2:
        g = w.step(w.teacher_action(), 0.02)
        worst = max(worst, abs(g.cte))
        ticks += 1
        assert ticks < 50 * 90, f"no lap on {name} after 90 s"
        assert not g.off_track
    assert worst < 0.5 * half


def test_teacher_recovers_from_a_bad_start():
    w = SimWorld("hairpin")
    w.reset(s=2.0, offset=0.6 * w.track.width / 2, yaw_offset=math.radians(20))
    for _ in range(50 * 30):
        g = w.step(w.teacher_action(), 0.02)
        assert not g.off_track
    assert abs(g.cte) < 0.05 and g.progress_laps > 1.0


# -- offline evaluation and demonstrations ---------------------------------------------------------


def test_evaluate_closed_loop_tells_driving_from_crashing():
    # A privileged policy (the teacher, consulted only when a frame arrives, its action applied
    # a tick later and held) must complete; a blind one must not.
    world = SimWorld("figure-s")
    frames_seen = []

    def teacher_at_frame_rate(img):
        frames_seen.append(img.shape)
        return world.teacher_action()

    good = evaluate_closed_loop(teacher_at_frame_rate, seconds=30, width=40, height=30,
                                world=world)
    assert good["completed"] and good["laps"] > 1.0 and good["off_track_fraction"] == 0
    assert good["frames"] == 30 * 30 == len(frames_seen) and good["ticks"] == 30 * 50
    assert frames_seen[0] == (30, 40, 3) and good["track"] == "figure-s"
    blind = evaluate_closed_loop(lambda img: Action(0.0, 0.5), "oval", seconds=10, width=40,
                                 height=30)
    assert not blind["completed"] and blind["off_track_fraction"] > 0.2
    assert blind["max_abs_cte"] > good["max_abs_cte"]


def test_collect_teacher_demos_labels_with_the_teacher_and_perturbs():
    pairs = list(collect_teacher_demos("chicane", 200, width=64, height=48, seed=1))
    assert len(pairs) == 200
    img, act = pairs[0]
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8 and isinstance(act, Action)
    steer = np.array([a.steering for _, a in pairs])
    assert steer.std() > 0.05 and np.abs(steer).max() <= 1.0
    calm = list(collect_teacher_demos("chicane", 400, width=32, height=24, seed=1, noise=0.0,
                                      return_truth=True))
    noisy = list(collect_teacher_demos("chicane", 400, width=32, height=24, seed=1, noise=0.8,
                                       perturb_rate_hz=3.0, return_truth=True))

    def mean_cte(rows):
        return np.mean([abs(t.cte) for _, _, t in rows])

    # Perturbations push the car further from the centreline, without leaving the road.
    assert mean_cte(noisy) > 1.5 * mean_cte(calm)
    assert not any(t.off_track for _, _, t in noisy)


# -- SimRobot ------------------------------------------------------------------------------------


def _cfg(**overrides):
    return load_config(env={}, overrides={"camera.width": 160, "camera.height": 120,
                                          **overrides})


def test_simrobot_frames_are_phase_locked_to_ticks():
    robot = SimRobot(_cfg(**{"profiles.sim.drive_hz": 50, "camera.fps": 30}))
    rendered_on = set()
    robot.connect()
    try:
        cam = robot.world.camera(160, 120)
        real_render = cam.render

        def spy(*a):
            rendered_on.add(threading.current_thread().name)
            return real_render(*a)

        cam.render = spy
        tick_times, frames, seq = [], {}, robot.frames_requested - 1
        for k in range(150):
            obs = robot.read()
            tick_times.append(obs.t)
            if frame_due(k, 50, 30):
                seq += 1  # wait for each frame so none is dropped, to check them all
                frame = robot.frames.wait_newer(seq - 1, timeout=5.0)
                assert frame is not None and frame.seq == seq
                frames[frame.seq] = frame
            robot.write(robot.teacher_action())
    finally:
        robot.close()
    assert robot.frames_requested == 90 == len(frames)  # 150 ticks at 50 Hz -> 30 fps exactly
    assert sorted(frames) == list(range(90))
    assert all(f.t_capture in set(tick_times) for f in frames.values())
    due = [k for k in range(150) if frame_due(k, 50, 30)]
    assert [tick_times.index(frames[i].t_capture) for i in range(90)] == due
    assert rendered_on == {"sim-camera"}  # the loop thread never renders
    img = frames[89].image
    assert img.shape == (120, 160, 3) and img.dtype == np.uint8


def test_simrobot_write_is_one_deterministic_tick():
    cfg = _cfg(**{"profiles.sim.drive_hz": 40, "profiles.sim.seed": 7})
    a, b = SimRobot(cfg), SimRobot(cfg)
    world = SimWorld.from_profile(cfg.profiles.sim)
    a.connect()
    b.connect()
    try:
        for k in range(120):
            act = Action(0.3 * math.sin(k / 10), 0.4)
            a.write(act)
            b.write(act)
            world.step(act, 1 / 40)
        oa, ob = a.read(), b.read()
        a.neutral()  # one tick, wheels straight and motor off
        assert a.read().state[3] == 0.0 and a.read().info["x"] != oa.info["x"]
    finally:
        a.close()
        b.close()
        a.close()  # twice is fine
    assert oa.info == ob.info
    assert oa.info["x"] == world.ground_truth().x and oa.info["cte"] == world.ground_truth().cte
    assert oa.state.dtype == np.float32 and len(oa.state) == len(a.spec.state_names)
    assert a.spec.state_names == STATE_NAMES
    assert set(oa.info) >= {"cte", "heading_error", "progress_laps", "off_track", "speed",
                            "x", "y", "yaw"}


def test_simrobot_refuses_use_before_connect():
    robot = SimRobot(_cfg())
    robot.close()  # closing an unconnected robot is fine, and so is neutral
    robot.neutral()
    with pytest.raises(RobotError, match="connect"):
        robot.read()
    with pytest.raises(RobotError, match="connect"):
        robot.write(Action())


def test_simrobot_applies_config_overrides():
    cfg = _cfg(**{"profiles.sim.track": "chicane", "profiles.sim.road_width_m": 0.8,
                  "profiles.sim.road_colour": "#112233", "profiles.sim.lighting": 0.5,
                  "profiles.sim.max_speed_mps": 3.0, "camera.fps": 20})
    robot = SimRobot(cfg)
    p = robot.sim_params()
    assert p["track"] == "chicane" and p["road_width_m"] == 0.8
    assert p["road_colour"] == "#112233" and p["lighting_multiplier"] == 0.5
    assert p["lighting"] == pytest.approx(LAYOUTS["chicane"].theme.lighting * 0.5)
    assert p["max_speed_mps"] == 3.0 and p["camera_fps"] == 20
    assert robot.spec.image_shape == (120, 160, 3) and robot.spec.camera_fps == 20


def test_bad_simulator_settings_name_the_key():
    cfg = _cfg(**{"profiles.sim.track": "hairpin", "profiles.sim.road_width_m": 2.5})
    with pytest.raises(ConfigError, match=r"profiles\.sim\.road_width_m .*hairpin"):
        SimRobot(cfg)
    with pytest.raises(SimParamError, match="line_colour"):
        SimWorld("oval", line_colour="yellow")
    with pytest.raises(SimParamError, match="unknown track 'moebius'"):
        SimWorld("moebius")
