"""Track files (profiles.sim.track_file) and lockstep (control.lockstep): a user's own layout
is validated with errors naming the field, drives like a built-in one, and simulated time runs
the same stack (loop, camera, policy, recorder) faster than real time, identically every run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from brain.config import ConfigError, builtin_config
from brain.control.model import SEED_MODEL_DIR
from brain.hardware.sim.tracks import SimParamError, load_track, load_track_file
from brain.hardware.sim.world import SimWorld, evaluate_closed_loop
from brain.rlds.store import list_episodes, load_episode
from brain.train.evaluate import EvalError, drive

GARAGE = Path(__file__).resolve().parent.parent / "etc" / "tracks" / "garage.toml"
SQUARE = """name = "square"
width_m = 0.6
segments = [["straight", 2], ["arc", 0.8, 90], ["straight", 2], ["arc", 0.8, 90],
            ["straight", 2], ["arc", 0.8, 90], ["straight", 2], ["arc", 0.8, 90]]
"""


def brain(state: Path, *args: str, timeout: float = 180, **env: str
          ) -> subprocess.CompletedProcess:
    full = {**os.environ, "BRAIN_STATE_DIR": str(state), "BRAIN_LOG_LEVEL": "warning", **env}
    return subprocess.run([sys.executable, "-m", "brain", *args], env=full, capture_output=True,
                          text=True, timeout=timeout)


def test_the_example_file_loads_and_the_teacher_drives_it() -> None:
    layout = load_track_file(GARAGE)
    assert layout.name == "garage" and layout.width_m == 0.75
    world = SimWorld("oval", seed=0, track_file=str(GARAGE))
    assert world.track.name == "garage" and world.params()["track_file"] == str(GARAGE)
    r = evaluate_closed_loop(lambda _img: world.teacher_action(), seconds=30, world=world)
    assert r["off_track_events"] == 0 and r["mean_abs_cte"] < 0.06, r


def test_json_and_toml_describe_the_same_track(tmp_path: Path) -> None:
    import tomllib

    (tmp_path / "square.toml").write_text(SQUARE)
    (tmp_path / "square.json").write_text(json.dumps(tomllib.loads(SQUARE)))
    a = load_track("oval", track_file=str(tmp_path / "square.toml"))
    b = load_track("oval", track_file=str(tmp_path / "square.json"))
    assert a.name == b.name == "square" and a.length == pytest.approx(b.length)
    assert a.length == pytest.approx(8 + 4 * 0.8 * 3.14159 / 2, rel=1e-3)


@pytest.mark.parametrize("text, message", [
    ("segments = [[\"straight\", 2], [\"arc\", 1, 180]]", "do not close a loop"),
    ("segments = [[\"straight\", 2]]", "a list of 2-200"),
    ("segments = [[\"bend\", 1, 90], [\"arc\", 1, 270]]", "segments[0]"),
    ("segments = [[\"straight\", nan], [\"arc\", 1, 360]]", "finite numbers"),
    ("segments = [[\"straight\", 1e9], [\"arc\", 1, 360]]", "0.05..100"),
    ("segments = [[\"arc\", 0.1, 360], [\"straight\", 0.1]]", "radius 0.3..100"),
    ("width_m = \"wide\"\nsegments = [[\"arc\", 1, 180], [\"arc\", 1, 180]]", "width_m"),
    ("width_m = 2.5\nsegments = [[\"arc\", 1, 180], [\"arc\", 1, 180]]", "width_m"),
    ("name = \"My Track\"\nsegments = [[\"arc\", 1, 360], [\"straight\", 0.1]]", "name"),
    ("colour = 1\nsegments = [[\"arc\", 1, 360], [\"straight\", 0.1]]", "unknown keys"),
    ("segments = [[\"arc\", 1, 180], [\"arc\", 1, 180]]\n[theme]\nroad = \"red\"", "theme.road"),
    ("segments = [[\"arc\", 1, 180], [\"arc\", 1, 180]]\n[theme]\nlighting = 9", "lighting"),
    ("segments = [[\"arc\", 1, 180], [\"arc\", 1, 180]]\n[theme]\nfog = 1", "unknown keys"),
    ("segments = [[\"arc\", 1, 180], ", "not valid TOML"),
])
def test_a_bad_file_is_refused_naming_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SimParamError) as e:
        load_track("oval", track_file=str(path))
    assert e.value.key == "track_file"
    assert message in e.value.message and str(path) in e.value.message


def test_files_that_are_not_tracks_are_refused(tmp_path: Path) -> None:
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00name")
    (tmp_path / "big.toml").write_text("# " + "x" * (300 << 10))
    (tmp_path / "list.json").write_text("[1, 2]")
    for name, message in (("missing.toml", "no such file"), ("binary.toml", "not valid TOML"),
                          ("big.toml", "larger than"), ("list.json", "not a table")):
        with pytest.raises(SimParamError, match=message):
            load_track_file(tmp_path / name)
    with pytest.raises(SimParamError, match="no such file"):
        load_track_file(tmp_path)  # a directory


def test_the_config_names_the_bad_file_and_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "open.toml").write_text("segments = [[\"straight\", 2], [\"arc\", 1, 90]]")
    with pytest.raises(ConfigError, match=r"profiles\.sim\.track_file .*open\.toml.*close"):
        builtin_config({"profiles.sim.track_file": str(tmp_path / "open.toml")})
    r = brain(tmp_path / "state", "config", "check",
              BRAIN_PROFILES_SIM_TRACK_FILE=str(tmp_path / "open.toml"))
    assert r.returncode == 2 and "open.toml" in r.stderr and "close a loop" in r.stderr
    assert not (tmp_path / "state").exists()


def test_lockstep_is_refused_off_the_simulator() -> None:
    with pytest.raises(ConfigError, match="lockstep"):
        builtin_config({"profile": "pi5-donkey", "control.lockstep": True})


def test_lockstep_evaluation_is_identical_run_to_run_and_matches_the_seed_record() -> None:
    """The daemon's stack on simulated time: the same figures every run, and the same as the
    seed's own record (tools/train_seed.py drove the simulator directly)."""
    a = drive(SEED_MODEL_DIR, track="oval", seconds=20)
    b = drive(SEED_MODEL_DIR, track="oval", seconds=20)
    assert {k: v for k, v in a.items() if k != "wall_s"} == \
        {k: v for k, v in b.items() if k != "wall_s"}
    assert a["ticks"] == 1000 and a["policy_fraction"] > 0.99
    assert a["off_track_events"] == 0 and a["mean_abs_cte"] < 0.02
    # |cte| along the lap: every stretch reached (more than a lap in 20 s), each stretch's mean
    # within the run's range, and the stretches together average out to the run's mean
    along = a["cte_along_track"]
    assert a["laps"] > 1 and len(along) == 50 and None not in along
    assert 0 <= min(along) and max(along) <= a["max_abs_cte"]
    assert min(along) <= a["mean_abs_cte"] <= max(along)
    # How much faster than real time lockstep runs is a speed, not a property: `brain collect
    # --lockstep` prints its loop rate, and bench/train.py measures it beside a baseline.
    direct = evaluate_closed_loop(load_policy_act(), track="oval", seconds=20, seed=1,
                                  max_throttle=0.6)
    assert a["mean_abs_cte"] == pytest.approx(direct["mean_abs_cte"], abs=0.003)


def load_policy_act():
    from brain.control.policy import load_policy

    return load_policy(str(SEED_MODEL_DIR)).act


def test_eval_refuses_bad_models_and_tracks(tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="policy.json"):
        drive(tmp_path, track="oval", seconds=5)
    with pytest.raises(EvalError, match="seconds"):
        drive(SEED_MODEL_DIR, track="oval", seconds=float("nan"))
    (tmp_path / "open.toml").write_text("segments = [[\"straight\", 2], [\"arc\", 1, 90]]")
    with pytest.raises(EvalError, match="close a loop"):
        drive(SEED_MODEL_DIR, track_file=str(tmp_path / "open.toml"), seconds=5)


def test_collect_in_lockstep_records_every_frame_on_a_track_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    r = brain(state, "collect", "--teacher", "--episodes", "2", "--seconds", "6",
              "--lockstep", "--track-file", str(GARAGE))
    assert r.returncode == 0, r.stderr
    episodes = state / "rlds" / "episodes"
    for entry in list_episodes(episodes):
        ep = load_episode(episodes, entry["id"])
        meta = ep.meta["metadata"]
        assert meta["simulator"]["track"] == "garage"
        assert meta["simulator"]["track_file"] == str(GARAGE)
        assert len(ep.steps) == 300  # held lockstep: exactly 6 s of 50 Hz ticks
        # 30 fps on 50 Hz ticks, every frame recorded: 180 frames in 6 simulated seconds.
        assert len(ep.frames) == pytest.approx(180, abs=1)
        assert ep.meta.get("dropped_frames", 0) == 0
    r = brain(state, "episodes", "validate", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(rep["status"] == "ok" and rep["skew_p99_ms"] == 0.0
               for rep in json.loads(r.stdout))
