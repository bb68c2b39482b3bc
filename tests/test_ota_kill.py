"""Kill the daemon (SIGKILL, from inside, at a named point) at every step of an install, restart
it, and check it settles on a verified model with consistent slots, as Mender's state tests do.

The kill points are test hooks (`BRAIN_TEST_OTA_KILL_AT`, honoured only with
`BRAIN_TEST_HOOKS=1`): in the middle of extracting a file, after the files are staged, after the
rename into the store, in the middle of each state.json write (new content synced, not yet
renamed) and after it, after the candidate is loaded, right after the swap, during probation.
Each point is tried several times, each from a fresh robot.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from brain.paths import StateLayout
from tests.ota_support import SEED, build, make_vectors, ota_daemon, settled, trusted_dir
from tests.test_ota import store_is_intact

pytestmark = pytest.mark.slow
TRIALS = 3
GOOD_POINTS = ["mid-extract", "staged-files", "stored", "mid-state:staged",
               "after-state:staged", "mid-state:trial", "after-state:trial", "loaded",
               "swapped", "probation", "mid-state:commit", "after-state:commit"]
FAILING_POINTS = ["mid-state:rollback", "after-state:rollback"]


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kill")
    vectors = root / "vectors"
    make_vectors(vectors)
    keys = trusted_dir(vectors, root / "keys")
    unsafe = build(SEED, vectors / "dev.key", root / "unsafe.bundle", "4.0.0", 7,
                   "--max-throttle", "0.01")  # fails probation: the seed drives faster
    return {"good": vectors / "valid.bundle", "unsafe": unsafe, "keys": keys}


@pytest.mark.parametrize("point", GOOD_POINTS + FAILING_POINTS)
def test_killed_at_every_step_settles_on_a_verified_model(point: str, material, tmp_path):
    bundle = material["unsafe" if point in FAILING_POINTS else "good"]
    outcomes = set()
    for trial in range(TRIALS):
        state = tmp_path / f"t{trial}"
        d = ota_daemon(state, material["keys"], env={"BRAIN_TEST_OTA_KILL_AT": point})
        try:
            d.wait_ready()
            factory = json.loads(d.cli("ota", "status", "--json").stdout)["active"]
            if point in FAILING_POINTS:
                d.cli("mode", "arm")  # the policy runs, so its outputs can break the limits
            d.cli("ota", "install", str(bundle), "--no-wait", check=False)
            rc = d.proc.wait(60)
            assert rc == -signal.SIGKILL, f"{point}: the daemon was not killed ({rc}):\n" \
                                          f"{d.log()}"
        finally:
            d.kill()
        again = ota_daemon(state, material["keys"])
        try:
            again.wait_ready()
            st = settled(again)
            outcomes.add(st["active"]["bundle_id"])
            check_consistent(state, st, again.status()["model"], factory["bundle_id"])
        finally:
            again.stop()
    # Before the commit is on disk the robot returns to what it had; after it, keeps the new.
    want = {"vectors-1.2.0-r5"} if point == "after-state:commit" else {"factory-seed-v1"}
    assert outcomes == want, (point, outcomes)


def check_consistent(state: Path, st: dict, model: str, factory: str) -> None:
    model_dir = StateLayout(state).model
    doc = json.loads((model_dir / "state.json").read_text())  # parses: never torn
    assert doc["phase"] in ("idle", "committed", "rolled_back"), doc["phase"]
    assert doc["seq"] == st["seq"] and doc["candidate"] is None
    for ref in (doc["active"], doc["lkg"]):
        store_is_intact(state, ref["bundle_id"])
    assert model == doc["active"]["bundle_id"]  # what drives is what the slots say
    assert doc["active"]["bundle_id"] in (factory, "vectors-1.2.0-r5", "test-4.0.0-r7")
    if doc["active"]["bundle_id"] == "test-4.0.0-r7":
        raise AssertionError("the bundle that breaks its safety block was committed")
    assert not list((model_dir / "staging").iterdir()), "a half-staged bundle was kept"
