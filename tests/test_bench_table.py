"""`make bench`'s machinery: the one table, its verdicts and exit status, a failing script
reported as a missed row, and the tub baseline writing what a tub holds. No figure is asserted
here: timings belong in the benchmarks' output, not in tests."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.table import Machine, Row, finish, format_table, read_rows, verdict
from bench.tub_baseline import TubWriter
from brain.hardware.robot import Frame, FrameSlot
from brain.rlds.recorder import StepSample

ROOT = Path(__file__).resolve().parent.parent


def rows() -> list[Row]:
    return [Row("loop", "lateness p99", 0.2, "ms", "<= 1 ms", True, 0.4, "naive"),
            Row("record", "export", 400.0, "MB/s", "ratio >= 0.50", False, 1000.0, "cp"),
            Row("api", "status p99", 3.0, "ms", "for scale", None)]


def test_the_table_has_every_column_and_says_which_goal_missed(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture
                                                                ) -> None:
    text = format_table(rows())
    header = text.splitlines()[0].split()
    for column in ("bench", "figure", "measured", "baseline", "ratio", "goal", "holds?"):
        assert column in header
    lines = text.splitlines()[2:]
    assert "0.50" in lines[0] and lines[0].rstrip().endswith("yes")  # 0.2 / 0.4
    assert "0.40" in lines[1] and lines[1].rstrip().endswith("NO")
    assert lines[2].rstrip().endswith("—")  # no goal, no baseline, no ratio
    assert verdict(rows()) == "1 of 2 goals missed: record: export"
    path = tmp_path / "rows.jsonl"
    assert finish(rows(), str(path), Machine()) == 1
    assert finish(rows()[:1], str(path), Machine()) == 0
    back = read_rows(path)
    assert [r.figure for r in back] == ["lateness p99", "export", "status p99", "lateness p99"]
    assert back[1].ratio == pytest.approx(0.4)
    assert "load average before the run" in capsys.readouterr().out


@pytest.mark.slow
def test_make_bench_runs_a_script_and_prints_one_table(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "bench/all.py", "--only", "startup", "--seconds", "5",
                        "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode in (0, 1), r.stdout[-3000:] + r.stderr[-3000:]  # 1: a goal missed
    table = (tmp_path / "table.txt").read_text()
    assert "every benchmark, one table" in r.stdout and table.strip() in r.stdout
    got = read_rows(tmp_path / "rows.jsonl")
    assert [g.figure.split(" (")[0] for g in got] == ["exec to READY=1, API off",
                                                      "exec to READY=1, API on"]
    for g in got:
        assert g.value > 0 and g.baseline is not None and g.baseline > 0
        assert g.holds is (g.value <= 3.0)
    assert (tmp_path / "startup.log").read_text().count("READY=1") >= 2


def test_a_failing_script_is_a_missed_row_not_a_silent_gap(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    import bench.all as suite

    monkeypatch.setitem(suite.BENCHES, "startup", lambda s: ["--runs", "not-a-number"])
    monkeypatch.setattr(sys, "argv", ["all.py", "--only", "startup", "--out", str(tmp_path)])
    assert suite.main() == 1
    table = (tmp_path / "table.txt").read_text()
    assert "bench/startup.py failed (exit 2; see startup.log)" in table
    assert "invalid int value" in (tmp_path / "startup.log").read_text()


def test_the_tub_baseline_writes_a_jpeg_per_frame_and_a_catalog_line_per_step(
        tmp_path: Path) -> None:
    slot = FrameSlot()
    tub = TubWriter(tmp_path / "tub", slot)
    tub.start({"operator": "test"})
    rng = np.random.default_rng(0)
    for seq in range(3):
        slot.publish(Frame(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8),
                           time.monotonic(), seq))
        deadline = time.monotonic() + 10
        while tub.frames_written <= seq and time.monotonic() < deadline:
            time.sleep(0.01)
        tub.on_step(StepSample(time.monotonic(), time.time(), np.zeros(3, np.float32),
                               (0.1 * seq, 0.2), 0.0, 1.0, False, "manual"))
    summary = tub.stop()
    assert summary["frames"] == 3 and summary["records"] == 3
    lines = [json.loads(x) for x in (tmp_path / "tub" / "catalog_0.catalog").read_text()
             .splitlines()]
    assert [x["user/angle"] for x in lines] == pytest.approx([0.0, 0.1, 0.2])
    for x in lines:
        with Image.open(tmp_path / "tub" / "images" / x["cam/image_array"]) as im:
            assert im.format == "JPEG" and im.size == (64, 48)
    assert not any(t.name.startswith("tub-") for t in threading.enumerate())  # stop joins
