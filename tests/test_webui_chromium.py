"""The web teleop page in a real browser against the real daemon.

`python -m brain run --sim` serves the page and the API on a free loopback port (plain HTTP, mDNS
off); Debian chromium, headless, driven by Playwright, pairs with the code from
`brain pair --json`, arms, lets the seed policy drive the simulated car, switches to manual and
drives with the keyboard, sees the camera, hits the e-stop and sees the mode latch. What the page
shows is cross-checked with `brain status --json` over the control socket. Skipped when chromium
or playwright is missing (a failure under BRAIN_REQUIRE_ALL_TESTS=1); the browser is never
downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemon_support import DaemonProcess
from tests.poll import wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian chromium")]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
MAX_STEERING = 0.8  # below the keyboard's full lock, so the daemon's clamp shows in telemetry
CAMERA = (640, 480)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daemon(tmp_path: Path, extra_env: dict[str, str] | None = None
                 ) -> Iterator[tuple[DaemonProcess, str]]:
    port = free_port()
    d = DaemonProcess(tmp_path / "state", "--sim", env={
        "BRAIN_API_ENABLED": "1", "BRAIN_API_HOST": "127.0.0.1", "BRAIN_API_PORT": str(port),
        "BRAIN_API_MDNS": "0", "BRAIN_API_TLS": "0", "BRAIN_ROBOT_NAME": "webui-car",
        "BRAIN_SAFETY_MAX_STEERING": str(MAX_STEERING), "BRAIN_CAMERA_WIDTH": str(CAMERA[0]),
        "BRAIN_CAMERA_HEIGHT": str(CAMERA[1]), **(extra_env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        d.wait_ready()

        def api_up() -> bool:
            if d.proc.poll() is not None:
                raise AssertionError(f"daemon exited {d.proc.returncode}:\n{d.log()}")
            try:
                return httpx.get(url + "/api/v1/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(api_up, what="the API")
        yield d, url
    finally:
        rc = d.stop()
        assert rc == 0, f"daemon exited {rc}:\n{d.log()}"


@pytest.fixture()
def daemon(tmp_path: Path) -> Iterator[tuple[DaemonProcess, str]]:
    yield from start_daemon(tmp_path)


def wait_for_js(page: Any, expression: str, what: str) -> Any:
    """Poll a JavaScript expression until it is truthy. Not `page.wait_for_function`: that
    builds its predicate with eval inside the page, which the page's Content-Security-Policy
    (script-src 'self', no 'unsafe-eval') rightly refuses; `page.evaluate` goes through the
    DevTools protocol, which the policy does not govern."""
    return wait_until(lambda: page.evaluate(expression), what=what, interval=0.05)


def wait_for_ticks(page: Any, above: int) -> None:
    """Until the telemetry shown on the page reports more than `above` loop ticks."""
    wait_for_js(page, f"Number(document.querySelector('#rate').dataset.ticks) > {above}",
                f"more than {above} ticks on the page")


def action_of(text: str) -> tuple[float, float]:
    """'s 0.80 t 0.50' (the page's #action) -> (0.8, 0.5)."""
    _s, steering, _t, throttle = text.split()
    return float(steering), float(throttle)


def test_pair_arm_drive_telemetry_estop(daemon, tmp_path):
    d, url = daemon
    shot = Path(os.environ.get("BRAIN_WEBUI_SCREENSHOT", tmp_path / "drive.png"))
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844}, has_touch=True,
                                    is_mobile=True, device_scale_factor=2)
            page.set_default_timeout(10_000)
            blocked: list[str] = []  # what the page's Content-Security-Policy refused
            page.on("console", lambda m: blocked.append(m.text)
                    if "Content Security Policy" in m.text else None)
            first = page.goto(url + "/")
            assert first is not None and "frame-ancestors 'none'" in \
                first.headers["content-security-policy"]
            page.wait_for_selector("#pair-screen:not([hidden])")
            page.wait_for_selector("#robot-name:text-is('webui-car')")
            page.fill("#pair-code", "000000")
            page.fill("#pair-client", "chromium")
            page.click("#pair-form button")
            page.wait_for_selector("#pair-error:text('wrong')")
            code = json.loads(d.cli("pair", "--json").stdout)["code"]
            page.fill("#pair-code", code)
            page.click("#pair-form button")
            page.wait_for_selector("#drive-screen:not([hidden])")
            page.wait_for_selector("#link.ok")
            page.wait_for_selector("#mode[data-value=idle]")

            # Arm: the policy is loaded but the car stays still.
            page.click("[data-mode=arm]")
            page.wait_for_selector("#mode[data-value=autonomous_armed]:text-is('armed')")
            page.wait_for_selector("[data-mode=arm].active")
            st = d.status()
            assert st["mode"] == "autonomous_armed" and st["action"]["throttle"] == 0.0

            # Drive: the seed policy steers and throttles the simulated car.
            page.click("[data-mode=drive]")
            page.wait_for_selector("#mode[data-value=autonomous_driving]:text-is('driving')")
            wait_for_js(page, "Number(document.querySelector('#action').textContent"
                        ".split(' ')[3]) !== 0", "the policy's throttle on the page")
            wait_for_ticks(page, int(page.get_attribute("#rate", "data-ticks") or 0) + 5)
            st = d.status()
            assert st["mode"] == "autonomous_driving" and st["action"]["source"] == "policy"
            assert st["action"]["throttle"] != 0.0

            # Manual: the keyboard drives; telemetry shows what the daemon applied (clamped).
            page.click("[data-mode=manual]")
            page.wait_for_selector("#mode[data-value=manual]")
            page.keyboard.down("ArrowUp")
            page.keyboard.down("ArrowRight")
            want = f"s {MAX_STEERING:.2f} t 0.50"
            page.wait_for_selector(f"#action:text-is('{want}')")
            st = wait_until(d.status, lambda s: s["action"]["source"] == "manual",
                            what="status to show the key command")
            assert (st["action"]["steering"], st["action"]["throttle"]) == (MAX_STEERING, 0.5)
            assert action_of(page.text_content("#action") or "") == (MAX_STEERING, 0.5)
            wait_for_js(page, "document.querySelector('#camera').naturalWidth > 0",
                        "a camera frame on the page")
            assert page.evaluate("[document.querySelector('#camera').naturalWidth, "
                                 "document.querySelector('#camera').naturalHeight]") == list(CAMERA)
            page.screenshot(path=str(shot))
            page.keyboard.up("ArrowUp")
            page.keyboard.up("ArrowRight")

            # E-stop latches: a following manual request is refused and the mode stays estop.
            page.click("#estop")
            page.wait_for_selector("#mode[data-value=estop]:text-is('e-stop')")
            page.wait_for_selector("[data-mode=reset].active")
            st = wait_until(d.status, lambda s: s["mode"] == "estop"
                            and s["action"]["throttle"] == 0.0, what="a neutral e-stop")
            assert st["action"]["steering"] == 0.0 and st["estop_reason"]
            page.click("[data-mode=manual]")
            page.wait_for_selector("#drive-error:text('latched')")
            ticks = int(page.get_attribute("#rate", "data-ticks") or 0)
            wait_for_ticks(page, ticks + 10)  # later telemetry events still read estop
            assert page.get_attribute("#mode", "data-value") == "estop"
            assert d.status()["mode"] == "estop"

            page.click("#record")
            page.wait_for_selector("#record.on")
            page.click("#record")
            page.wait_for_selector("#record:not(.on)")
            page.click("#show-episodes")
            page.wait_for_selector("#episode-list li")
            page.click("#show-diagnostics")
            page.wait_for_selector("#diagnostics:text('checks')")
            assert not blocked, blocked  # the page works entirely under its own policy
        finally:
            browser.close()


def pair_page(page: Any, d: DaemonProcess, url: str) -> None:
    page.goto(url + "/")
    page.wait_for_selector("#pair-screen:not([hidden])")
    page.fill("#pair-code", json.loads(d.cli("pair", "--json").stdout)["code"])
    page.fill("#pair-client", "chromium")
    page.click("#pair-form button")
    page.wait_for_selector("#drive-screen:not([hidden])")


def test_page_follows_ota_and_rolls_back(tmp_path: Path) -> None:
    from tests.ota_support import make_vectors, trusted_dir

    vectors = tmp_path / "vectors"
    make_vectors(vectors)
    env = {"BRAIN_OTA_TRUSTED_KEYS_DIR": str(trusted_dir(vectors, tmp_path / "keys")),
           "BRAIN_OTA_PROBATION_S": "0.5"}
    for d, url in start_daemon(tmp_path, env):
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            try:
                page = browser.new_page()
                page.set_default_timeout(10_000)
                pair_page(page, d, url)
                page.wait_for_selector("#ota-active:text-is('factory-seed-v1')")
                d.cli("ota", "install", str(vectors / "valid.bundle"))
                page.wait_for_selector("#ota-active:text-is('vectors-1.2.0-r5')")
                page.wait_for_selector("#ota-phase[data-value=committed]")
                page.click("#ota-rollback")
                page.wait_for_selector("#ota-active:text-is('factory-seed-v1')")
                page.wait_for_selector("#ota-phase[data-value=rolled_back]")
                assert d.status()["model"] == "factory-seed-v1"
            finally:
                browser.close()
