"""HTTP API against a real uvicorn server on loopback, with the fake service behind it."""

from __future__ import annotations

import json
import tarfile
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.api_support.client import pair, running_server
from tests.poll import wait_until


@pytest.fixture()
def api(tmp_path):
    with running_server(tmp_path / "state") as (server, svc):
        headers = pair(server)
        with httpx.Client(base_url=server.url, headers=headers, timeout=5) as c:
            yield server, svc, c


def ws_url(server, ticket: str | None = None) -> str:
    url = server.url.replace("http", "ws", 1) + "/api/v1/teleop"
    return url + (f"?ticket={ticket}" if ticket else "")


def ticket(c) -> str:
    return c.post("/api/v1/ticket").json()["ticket"]


def test_unauthenticated_calls_get_401_except_health_and_pair(api):
    server, _svc, _c = api
    anon = httpx.Client(base_url=server.url)
    assert anon.get("/api/v1/health").status_code == 200
    assert anon.post("/api/v1/pair", json={"code": "000000", "client_name": "x"}).status_code \
        == 403
    for method, path in [("GET", "/api/v1/status"), ("POST", "/api/v1/mode"),
                         ("GET", "/api/v1/diagnostics"), ("GET", "/api/v1/episodes"),
                         ("POST", "/api/v1/episodes/start"), ("POST", "/api/v1/episodes/stop"),
                         ("DELETE", "/api/v1/episodes/x"), ("POST", "/api/v1/episodes/export"),
                         ("GET", "/api/v1/exports/x.tar"), ("GET", "/api/v1/camera.mjpeg"),
                         ("GET", "/api/v1/telemetry"), ("POST", "/api/v1/ticket")]:
        r = anon.request(method, path, json={}, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401, (method, path, r.status_code)
    assert anon.get("/").status_code == 200 and b"pair-screen" in anon.get("/").content


def test_mode_state_machine_and_estop_latch(api):
    _server, svc, c = api
    assert c.post("/api/v1/mode", json={"mode": "drive"}).status_code == 409
    assert c.post("/api/v1/mode", json={"mode": "arm"}).json()["mode"] == "autonomous_armed"
    assert c.post("/api/v1/mode", json={"mode": "drive"}).json()["mode"] == "autonomous_driving"
    assert c.post("/api/v1/mode", json={"mode": "estop"}).json()["mode"] == "estop"
    r = c.post("/api/v1/mode", json={"mode": "manual"})
    assert r.status_code == 409 and "latched" in r.json()["detail"]
    assert c.get("/api/v1/status").json()["mode"] == "estop"
    assert c.post("/api/v1/mode", json={"mode": "reset"}).json()["mode"] == "idle"
    assert c.post("/api/v1/mode", json={"mode": "fly"}).status_code == 422


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"mode": 3}', b'{"mode":"idle","x":1}', b""])
def test_malformed_bodies_are_4xx(api, body):
    _server, svc, c = api
    r = c.post("/api/v1/mode", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500
    assert svc.mode == "idle"


def test_request_size_bounded(api):
    _server, _svc, c = api
    body = {"operator": "a", "language_instruction": "x" * 70000}
    r = c.post("/api/v1/episodes/start", json=body)
    assert r.status_code == 413


def test_episodes_flow_and_archive_download(api):
    _server, svc, c = api
    assert c.post("/api/v1/episodes/stop").status_code == 409
    ep = c.post("/api/v1/episodes/start", json={"operator": "ann",
                                                "language_instruction": "lap"}).json()
    assert c.post("/api/v1/episodes/start", json={}).status_code == 409
    time.sleep(0.3)  # some steps and frames to export
    c.post("/api/v1/episodes/stop").raise_for_status()
    assert [e["id"] for e in c.get("/api/v1/episodes").json()["episodes"]] == [ep["id"]]
    assert c.post("/api/v1/episodes/export", json={"ids": ["nope"]}).status_code == 404
    exp = c.post("/api/v1/episodes/export", json={"ids": [ep["id"]], "anonymize": True}).json()
    r = c.get(exp["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
    path = svc.state_dir / "dl.tar"
    path.write_bytes(r.content)
    with tarfile.open(path) as tar:
        stem = exp["name"].removesuffix(".tar")
        manifest = json.load(tar.extractfile(f"{stem}/export_manifest.json"))
    assert [e["id"] for e in manifest["episodes"]] == [ep["id"]]
    assert manifest["anonymization"]["applied"]
    assert "ann" not in json.dumps(manifest["anonymization"])
    assert [e["name"] for e in c.get("/api/v1/exports").json()["exports"]] == [exp["name"]]
    # a ticket works for the download (browsers follow a plain link)
    anon = httpx.Client(base_url=c.base_url)
    assert anon.get(exp["url"], params={"ticket": ticket(c)}).status_code == 200
    assert c.get("/api/v1/exports/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert c.delete("/api/v1/episodes/nope").status_code == 404
    assert c.delete(f"/api/v1/episodes/{ep['id']}").status_code == 200
    assert c.get("/api/v1/episodes").json()["episodes"] == []


def test_telemetry_sse_and_mjpeg_with_ticket(api):
    _server, _svc, c = api
    anon = httpx.Client(base_url=c.base_url, timeout=5)
    t = ticket(c)
    events = []
    with anon.stream("GET", "/api/v1/telemetry", params={"ticket": t}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
            if len(events) == 2:
                break
    assert events[1]["ticks"] > events[0]["ticks"] and events[0]["mode"] == "idle"
    with anon.stream("GET", "/api/v1/camera.mjpeg", params={"ticket": t}) as r:
        assert r.headers["content-type"].startswith("multipart/x-mixed-replace")
        buf = b""
        for chunk in r.iter_bytes():
            buf += chunk
            if buf.count(b"\xff\xd9") >= 2:
                break
    assert buf.startswith(b"--frame\r\nContent-Type: image/jpeg") and b"\xff\xd8" in buf


def test_teleop_websocket_auth_and_origin(api):
    server, svc, c = api
    with pytest.raises(InvalidStatus):
        connect(ws_url(server)).close()
    with pytest.raises(InvalidStatus):
        connect(ws_url(server, ticket(c)), origin="http://evil.example").close()
    host = server.url.split("//", 1)[1]
    c.post("/api/v1/mode", json={"mode": "manual"}).raise_for_status()
    with connect(ws_url(server, ticket(c)), origin=f"http://{host}") as ws:
        ws.send(json.dumps({"steering": 0.5, "throttle": 0.2}))
        wait_until(lambda: svc.action, lambda a: a == (0.5, 0.2), timeout=2)
        ws.send(json.dumps({"steering": 5, "throttle": 0}))  # out of range: closed, neutral
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=2)
        assert e.value.rcvd.code == 1007
    wait_until(lambda: svc.action, lambda a: a == (0.0, 0.0), timeout=2)


def _neutral_after(svc, since: float) -> float:
    def first_neutral() -> float | None:
        return next((t for t, _why, s, th in svc.log if t >= since and (s, th) == (0.0, 0.0)),
                    None)

    return wait_until(first_neutral, lambda t: t is not None, timeout=2.0, interval=0.005,
                      what="neutral")


@pytest.mark.parametrize("how", ["disconnect", "silence"])
def test_deadman_link_loss_goes_neutral_within_250ms(tmp_path, how):
    """Behavioural: the last teleop command and the neutral action are both timestamped on
    the loop's clock. A closed link is released at once; a silent one by the robot's own
    deadman (250 ms, the same for every transport), never later."""
    with running_server(tmp_path / "state", deadman_ms=250) as (server, svc):
        headers = pair(server)
        c = httpx.Client(base_url=server.url, headers=headers)
        c.post("/api/v1/mode", json={"mode": "manual"}).raise_for_status()
        with connect(ws_url(server, ticket(c))) as ws:
            for _ in range(10):
                ws.send(json.dumps({"steering": 0.3, "throttle": 0.4}))
                time.sleep(0.02)
            wait_until(lambda: svc.teleop_count, lambda n: n >= 10, timeout=2)
            wait_until(lambda: svc.action, lambda a: a == (0.3, 0.4), timeout=2)
            if how == "disconnect":
                ws.close()
            last_cmd = svc.last_command_at
            t_neutral = _neutral_after(svc, last_cmd)
        assert t_neutral - last_cmd <= 0.25, svc.log[-3:]
        why = "manual:none" if how == "disconnect" else "manual:deadman"
        assert svc.log[-1][1] == why, svc.log[-3:]
        if how == "disconnect":
            assert t_neutral - last_cmd < 0.2, "a closed link is released at once"


def test_query_strings_are_parsed_as_text_within_the_commands_limits(api):
    """GET arguments arrive as text: `?histogram=true` is the bool true (it was refused with
    422 while the query took the command's strict model as it was), and whatever the command's
    model forbids is still refused."""
    _server, _svc, c = api
    r = c.get("/api/v1/status", params={"histogram": "true"})
    assert r.status_code == 200, r.text
    assert "histogram" in r.json()
    assert "histogram" not in c.get("/api/v1/status", params={"histogram": "false"}).json()
    for bad in ("maybe", "2", "nan"):
        r = c.get("/api/v1/status", params={"histogram": bad})
        assert r.status_code == 422 and "histogram" in r.text, (bad, r.text)
    assert c.get("/api/v1/status", params={"verbose": "1"}).status_code == 422
