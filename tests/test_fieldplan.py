"""The field plan end to end: `brain cycle --sim --short` (fewer episodes and steps than
`make demo`), every phase against a real daemon, then its HTML report opened in Chromium."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cloud_support import env

pytestmark = pytest.mark.slow


@pytest.mark.timeout(1500)
def test_the_short_cycle_passes_every_gate_and_reports_them(tmp_path: Path) -> None:
    out = tmp_path / "cycle"
    r = subprocess.run([sys.executable, "-m", "brain", "cycle", "--sim", "--short", "--out",
                        str(out)], env=env(), capture_output=True, text=True, timeout=1400)
    report = json.loads((out / "report.json").read_text())
    failed = [(p["number"], p["error"], [g for g in p["gates"] if not g["passed"]])
              for p in report["phases"] if not p["passed"]]
    assert r.returncode == 0 and report["passed"], (failed, r.stdout[-3000:])
    assert [p["number"] for p in report["phases"]] == list(range(1, 10))
    assert all(p["gates"] for p in report["phases"])
    for line in ("[1/9]", "[9/9]", "PASSED"):
        assert line in r.stdout  # the progress display
    html = (out / "report.html").read_text()
    pngs = [n for n in ("loss.png", "cte.png", "lateness.png", "ota.png") if n in html]
    assert len(pngs) == 4 and all((out / n).stat().st_size > 5000 for n in pngs)
    _look_in_chromium(out / "report.html")


def _look_in_chromium(page_path: Path) -> None:
    from tests.test_webui_chromium import CHROMIUM, FLAGS, playwright

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1400})
            page.goto(page_path.as_uri())
            assert page.get_attribute("#verdict", "data-passed") == "true"
            loaded = page.evaluate("[...document.images].map(i => i.naturalWidth)")
            assert len(loaded) == 4 and all(w > 300 for w in loaded), loaded
            rows = page.evaluate("document.querySelectorAll('#gates tr.gate').length")
            assert rows >= 30
            if os.environ.get("BRAIN_SCREENSHOT"):
                page.screenshot(path=os.environ["BRAIN_SCREENSHOT"], full_page=True)
        finally:
            browser.close()
