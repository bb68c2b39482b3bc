"""The web teleop page in a real browser: Debian chromium, headless, driven by Playwright.

Pair with a code, arm, switch to manual and drive with the keyboard, watch telemetry follow,
hit the e-stop and see the mode latch. Skipped when chromium or playwright is missing; the
browser is never downloaded.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.api_support.client import running_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian chromium")]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def test_pair_arm_drive_telemetry_estop(tmp_path):
    shot = Path(os.environ.get("BRAIN_WEBUI_SCREENSHOT", tmp_path / "drive.png"))
    with running_server(tmp_path / "state") as (server, svc), playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844}, has_touch=True,
                                    is_mobile=True, device_scale_factor=2)
            page.goto(server.url + "/")
            page.wait_for_selector("#pair-screen:not([hidden])")
            assert page.inner_text("#robot-name") == "testbot"
            page.fill("#pair-code", "000000")
            page.fill("#pair-client", "chromium")
            page.click("#pair-form button")
            page.wait_for_selector("#pair-error:text('wrong')")
            page.fill("#pair-code", server.pairing.new_code()["code"])
            page.click("#pair-form button")
            page.wait_for_selector("#drive-screen:not([hidden])")
            page.wait_for_selector("#link.ok")

            page.click("[data-mode=arm]")
            page.wait_for_selector("#mode:text-is('armed')")
            page.click("[data-mode=manual]")
            page.wait_for_selector("#mode:text-is('manual')")
            page.keyboard.down("ArrowUp")
            page.keyboard.down("ArrowRight")
            page.wait_for_selector("#action:text-is('s 1.00 t 0.50')", timeout=5000)
            assert svc.action == (1.0, 0.5)
            page.wait_for_function("document.querySelector('#camera').naturalWidth > 0")
            page.screenshot(path=str(shot))
            page.keyboard.up("ArrowUp")
            page.keyboard.up("ArrowRight")

            page.click("#estop")
            page.wait_for_selector("#mode:text-is('estop')")
            assert svc.mode == "estop" and svc.action == (0.0, 0.0)
            page.click("[data-mode=manual]")
            page.wait_for_selector("#drive-error:text('latched')")
            assert page.text_content("#mode") == "estop" and svc.mode == "estop"

            page.click("#record")
            page.wait_for_selector("#record.on")
            page.click("#record")
            page.wait_for_selector("#record:not(.on)")
            page.click("#show-episodes")
            page.wait_for_selector("#episode-list li")
            page.click("#show-diagnostics")
            page.wait_for_selector("#diagnostics:text('checks')")
        finally:
            browser.close()
