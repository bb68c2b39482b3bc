"""Phase 4 of the field plan in the simulator: the robot learns a track its seed policy cannot
drive, without forgetting the ones it can, and promotes what it learnt through OTA.

Each case is what a user runs: 16 teacher episodes of 15 s (`brain collect --lockstep`), then
`brain train --config etc/train/pi5-donkey.json` (300 steps x batch 8, LoRA, rehearsal), whose
gate drives the candidate and the active policy 40 s closed loop on every track concerned. The
figures are printed (pytest -s) before and after for each track, with each one's margin to its
bound.

Deterministic on purpose: lockstep collections with the simulator's default seed and the
config's training seed, so each case gives the same figures on every run on a machine. These are
single points; the spread over training seeds and collections (worst case, median) is
measured by `python bench/train.py --parts learning`, not here (docs/training.md).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from brain.train.settings import load_settings
from tests.daemon_support import DaemonProcess
from tests.train_support import MARGINS

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "etc" / "train" / "pi5-donkey.json"
GARAGE = ROOT / "etc" / "tracks" / "garage.toml"
KEPT = ("oval", "rounded-square", "figure-s")  # built-in tracks the seed drives
GATE = load_settings(CONFIG).gate  # the one rule: thresholds and how they apply


def brain(state: Path, *args: str, timeout: float = 600, **env: str
          ) -> subprocess.CompletedProcess:
    full = {**os.environ, "BRAIN_STATE_DIR": str(state), "BRAIN_LOG_LEVEL": "warning",
            "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", "brain", *args], env=full, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def collect(state: Path, where: list[str], **env: str) -> list[str]:
    r = brain(state, "collect", "--teacher", "--episodes", "16", "--seconds", "15",
              "--lockstep", *where, **env)
    assert r.returncode == 0, r.stderr
    return re.findall(r"episode \d+/16 (\S+):", r.stdout)


def train(state: Path, *args: str, case: str = "", **env: str
          ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    r = brain(state, "train", "--config", str(CONFIG), "--json", *args, **env)
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    report = next((e for e in events if e.get("event") == "report"), None)
    assert report is not None, f"rc {r.returncode}: {r.stderr[-3000:]}"
    print_report(report, case)
    return report, events


def print_report(report: dict[str, Any], case: str) -> None:
    """The figures and, for each, how far it is from its bound (the margin); also kept for the
    run's closing summary (tests/conftest.py)."""
    lines = [f"{case}: {report['candidate']} vs {report['active']}: "
             f"{'passed' if report['passed'] else 'REFUSED'}"]
    for kind in ("target", "kept"):
        for place, r in report["checks"][kind].items():
            a, c = r["active"], r["candidate"]
            bound = GATE.target_max_mean_cte if kind == "target" else \
                GATE.kept_limit(a["mean_abs_cte"])
            lines.append(f"  {kind:<6} {place:<15} mean|cte| {a['mean_abs_cte']:.4f} -> "
                         f"{c['mean_abs_cte']:.4f} m (bound {bound:.4f}, margin "
                         f"{1 - c['mean_abs_cte'] / bound:+.0%})   off-track "
                         f"{a['off_track_events']} -> {c['off_track_events']}")
    lines += [f"  refused: {reason}" for reason in report["reasons"]]
    print("\n" + "\n".join(lines))
    MARGINS.extend(lines)


def assert_adapted_without_forgetting(report: dict[str, Any], target: str) -> None:
    """The learning goal (brain.train.settings.Gate, the gate's own rule): the new track with
    no off-track event and mean |cte| within the target bound; every built-in track the seed
    drives with no off-track event and within the kept limit of the active policy's."""
    t = report["checks"]["target"][target]["candidate"]
    assert GATE.target_ok(t), t
    assert t["seconds"] == GATE.eval_seconds
    for place in KEPT:
        r = report["checks"]["kept"][place]
        assert GATE.kept_ok(r["candidate"], r["active"]), (place, r)
    assert report["passed"], report["reasons"]


@pytest.mark.parametrize("target, where", [
    ("chicane", ["--track", "chicane"]),
    ("hairpin", ["--track", "hairpin"]),
    ("garage", ["--track-file", str(GARAGE)]),
], ids=["chicane", "hairpin", "track-file"])
def test_adapts_to_a_new_track_and_keeps_the_old_ones(tmp_path: Path, target: str,
                                                      where: list[str]) -> None:
    state = tmp_path / "state"
    collect(state, where)
    report, events = train(state, "--no-promote", case=f"adapt to {target}")
    assert_adapted_without_forgetting(report, target)
    if target != "garage":  # the seed already drives the garage, if less well
        before = report["checks"]["target"][target]["active"]
        assert before["off_track_events"] >= 1, "the seed policy must fail here to start with"
    data = next(e for e in events if e.get("event") == "data")
    assert data["used"] == 16 and data["train_frames"] + data["val_frames"] > 7000
    steps = [e for e in events if "event" not in e and "loss" in e]
    assert steps[-1]["step"] == 300 and steps[-1]["loss"] < steps[0]["loss"] / 5
    assert report["promotion"]["status"] == "skipped"


@pytest.mark.timeout(1200)
def test_adapt_promote_adapt_promote_on_a_running_daemon(tmp_path: Path) -> None:
    """chicane -> OTA -> hairpin -> OTA, as a robot moved from place to place, with the daemon
    running throughout; then a candidate that fails the gate is refused with its reason."""
    state = tmp_path / "state"
    keys = tmp_path / "trusted"
    keys.mkdir()
    env = {"BRAIN_OTA_ALLOW_LOCAL_PROMOTION": "1", "BRAIN_OTA_PROBATION_S": "2",
           "BRAIN_OTA_TRUSTED_KEYS_DIR": str(keys)}
    d = DaemonProcess(state, env=env)
    try:
        d.wait_ready()
        collect(state, ["--track", "chicane"], **env)
        report, _ = train(state, case="daemon: chicane", **env)
        assert_adapted_without_forgetting(report, "chicane")
        first = report["promotion"]
        assert first["status"] == "committed", first
        ota = json.loads(d.cli("ota", "status", "--json").stdout)
        assert ota["active"]["bundle_id"] == first["bundle_id"] and ota["active"]["origin"] \
            == "device"
        assert d.status()["model"] == first["bundle_id"]

        hairpin = collect(state, ["--track", "hairpin"], **env)
        report, _ = train(state, "--episodes", *hairpin, case="daemon: hairpin after chicane",
                          **env)
        assert report["active"].startswith("seed-v1+"), "adapted from the chicane policy"
        assert set(report["checks"]["kept"]) == {*KEPT, "chicane"}
        assert report["passed"], report["reasons"]
        second = report["promotion"]
        assert second["status"] == "committed", second
        assert d.status()["model"] == second["bundle_id"]

        r = brain(state, "eval", "--model", "active", "--track", "oval", "--track", "chicane",
                  "--track", "hairpin", "--json", **env)
        assert r.returncode == 0, r.stderr
        for line in r.stdout.splitlines():
            result = json.loads(line)
            shown = (f"  final  {result['track']:<15} mean|cte| {result['mean_abs_cte']:.4f} m "
                     f"(bound {GATE.target_max_mean_cte}, margin "
                     f"{1 - result['mean_abs_cte'] / GATE.target_max_mean_cte:+.0%})  "
                     f"off-track {result['off_track_events']}")
            print(shown)
            MARGINS.append(shown)
            assert GATE.target_ok(result), result

        strict = tmp_path / "strict.json"
        strict.write_text(json.dumps({**json.loads(CONFIG.read_text()),
                                      "gate": {"target_max_mean_cte": 0.001}}))
        r = brain(state, "train", "gate", "--config", str(strict), **env)
        assert r.returncode == 1
        assert "REFUSED" in r.stdout and "refused: target hairpin" in r.stdout, r.stdout
        ota = json.loads(d.cli("ota", "status", "--json").stdout)
        assert ota["active"]["bundle_id"] == second["bundle_id"] and ota["phase"] == "committed"
    finally:
        assert d.stop() == 0, d.log()
