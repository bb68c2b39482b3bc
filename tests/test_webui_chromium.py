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
import threading
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


@pytest.mark.timeout(900)
def test_background_training_from_teleop_to_the_page(tmp_path: Path) -> None:
    """The field plan's switch on the simulator: 16 episodes recorded by teleop (the teacher
    driving through the daemon's command surface) queue a job by themselves; the worker (the
    daemon's child here, as under `make run`) trains it; the page follows the loss live over SSE
    and shows the gate's verdict; its Promote button installs the candidate through OTA."""
    job_config = tmp_path / "job.json"
    job_config.write_text(json.dumps({"gate": {"eval_seconds": 10}}))
    env = {"CONTINUON_ENABLE_BACKGROUND_TRAINER": "1", "BRAIN_TRAIN_TRIGGER_POLL_S": "1",
           "BRAIN_TRAIN_TRIGGER_MIN_INTERVAL_S": "0", "BRAIN_TRAIN_JOB_CONFIG": str(job_config),
           "BRAIN_OTA_ALLOW_LOCAL_PROMOTION": "1", "BRAIN_OTA_PROBATION_S": "1",
           "BRAIN_OTA_TRUSTED_KEYS_DIR": str(tmp_path / "no-publisher-keys")}
    for d, url in start_daemon(tmp_path, env):
        _background_training(d, url)


def _background_training(d: DaemonProcess, url: str) -> None:
    r = d.cli("collect", "--teacher", "--daemon", "--episodes", "16", "--seconds", "4",
              timeout=300)
    assert r.stdout.count(", complete") == 16, r.stdout
    jobs = wait_until(lambda: json.loads(d.cli("train", "list", "--json").stdout),
                      lambda js: bool(js) and js[0]["status"] != "submitted", timeout=60,
                      interval=0.5, what="the triggered job")
    assert len(jobs) == 1 and jobs[0]["status"] in ("queued", "running")
    job_id = jobs[0]["id"]
    assert json.loads(d.cli("train", "status", job_id, "--json").stdout)["origin"] == \
        "trigger"
    # A native SSE client follows the job from now on, on its own thread.
    token = _pair_token(d, url)
    streamed: list[dict[str, str]] = []
    reader = threading.Thread(target=_sse_events, daemon=True, args=(
        url, f"/api/v1/training/{job_id}/events", token, streamed))
    reader.start()
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 1400})
            page.set_default_timeout(20_000)
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            pair_page(page, d, url)
            try:
                page.wait_for_selector(f"#train-job:text-is('{job_id}')")
            except Exception:
                raise AssertionError(f"the page did not follow {job_id}: {errors}") from None
            page.wait_for_selector("#train-chart canvas")  # uPlot drew its chart
            first = int(wait_for_js(page, "document.querySelector('#train-chart')"
                                    ".dataset.points", "the first metric points") or 0)
            live = wait_until(lambda: page.evaluate(
                "[Number(document.querySelector('#train-chart').dataset.points), "
                "document.querySelector('#train-status').dataset.value]"),
                lambda v: v[0] > first and v[1] == "running", timeout=60, interval=0.2,
                what="more points while the job runs")
            assert live[0] > first, "the chart grows live"
            # The native client holds metrics while the store still says `running` (read
            # after counting): they came live, by order of events, not by a clock.
            wait_until(lambda: (sum(e["event"] == "metric" for e in streamed),
                                json.loads(d.cli("train", "status", job_id,
                                                 "--json").stdout)["status"]),
                       lambda v: v[0] >= 1 and v[1] == "running", timeout=60, interval=0.2,
                       what="metrics at the SSE client while the job runs")
            page.wait_for_selector("#train-verdict:not([hidden])", timeout=240_000)
            points = page.evaluate("Number(document.querySelector('#train-chart')"
                                   ".dataset.points)")
            assert points == 30  # 300 steps, one point every 10
            job = json.loads(d.cli("train", "status", job_id, "--json").stdout)
            assert job["status"] == "completed" and job["gate"]["passed"], job["reason"]
            losses = [m["loss"] for m in json.loads(
                d.cli("train", "metrics", job_id, "--json").stdout)]
            assert losses[-1] < losses[0] / 3, losses
            assert page.get_attribute("#train-verdict", "data-passed") == "true"
            assert "gate passed" in page.inner_text("#train-verdict")
            st = d.status()
            print(f"\nloop while training: p99 {st['lateness_ms']['p99']:.3f} ms, "
                  f"max {st['lateness_ms']['max']:.3f} ms, missed {st['missed_ticks']}")
            # The native client: every metric, then the result.
            reader.join(timeout=30)
            kinds = [e["event"] for e in streamed]
            assert kinds.count("metric") == 30 and kinds[-1] == "result", kinds
            assert json.loads(streamed[-1]["data"])["gate"]["passed"] is True
            page.click("#train-promote")
            page.wait_for_selector("#ota-phase[data-value=committed]", timeout=60_000)
            assert d.status()["model"].startswith("local-")
        finally:
            browser.close()


def _pair_token(d: DaemonProcess, url: str) -> str:
    code = json.loads(d.cli("pair", "--json").stdout)["code"]
    r = httpx.post(url + "/api/v1/pair", json={"code": code, "client_name": "sse-client"})
    r.raise_for_status()
    return str(r.json()["token"])


def _sse_events(url: str, path: str, token: str,
                events: list[dict[str, str]]) -> None:
    """Read a Server-Sent Events stream to its end into `events`, one dict of fields each."""
    current: dict[str, str] = {}
    with httpx.stream("GET", url + path, headers={"Authorization": f"Bearer {token}"},
                      timeout=300) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith(
            "text/event-stream")
        for line in r.iter_lines():
            if line.startswith(":"):
                continue  # a comment (keep-alive)
            if not line:
                if current:
                    events.append(current)
                current = {}
                continue
            field, _, value = line.partition(":")
            current[field] = value.lstrip()
    if current:
        events.append(current)
