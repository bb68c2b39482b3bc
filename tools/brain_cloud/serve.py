"""`brain-cloud serve`: channels for a LAN or a lab, the robots' reports, staged rollouts, and a
page with the runs, the fleet and the **Run full cycle now** button.

What robots use needs no credentials:
- GET  /channels/<name>/channel.json, channel.json.sig and bundles/<id>.bundle, with Range
  (static files: the same directory can be copied to any static host or CDN);
- POST /channels/<name>/report, the robots' reports.

A forged report can only push a rollout towards a halt, the safe direction: installing anything
still needs a document signed by the publisher key.

Everything else needs the admin token (`Authorization: Bearer`, or `?token=` for the page's
EventSource):
- GET  /api/status, the channels with their robots, the runs (their run-summary.json), and the
  running cycle;
- POST /api/channels/<name>/publish (body: a bundle; ?stages=10,25,50,100&threshold=0.25);
- POST /api/channels/<name>/halt[?rollback=false];
- POST /api/full-cycle, which starts `brain-cloud full-cycle` with the arguments serve was
  given (409 while one runs);
- GET  /api/runs/<id>/log, the run's log as Server-Sent Events, live, to the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import shlex
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from brain_cloud.cycle import SUMMARY, new_run_id
from brain_cloud.fleet import DOC_LIFETIME_S, FleetError, Rollout

log = logging.getLogger(__name__)

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$")
SERVED = re.compile(r"^(channel\.json(\.sig)?|bundles/[A-Za-z0-9._+-]{1,200}\.bundle)$")
STATIC = Path(__file__).with_name("static")
MAX_BUNDLE = 1 << 30


@dataclass
class ServeConfig:
    root: Path
    key: Path
    public_url: str
    # hex: a token never starts with "-", which argparse would take for an option (`--token -x`)
    token: str = field(default_factory=lambda: secrets.token_hex(24))
    cycle_args: list[str] = field(default_factory=list)
    channel_names: list[str] = field(default_factory=lambda: ["stable"])
    doc_lifetime_s: float = DOC_LIFETIME_S  # how long a signed channel document is valid
    refresh_every_s: float = 3600.0  # how often every channel is checked for re-signing

    @property
    def channels(self) -> Path:
        return self.root / "channels"

    @property
    def runs(self) -> Path:
        return self.root / "runs"


class Server:
    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.rollouts: dict[str, Rollout] = {}
        self.cycle: subprocess.Popen[bytes] | None = None
        self.cycle_id: str | None = None
        self._lock = threading.Lock()
        cfg.channels.mkdir(parents=True, exist_ok=True)
        cfg.runs.mkdir(parents=True, exist_ok=True)
        names = {d.name for d in cfg.channels.iterdir() if d.is_dir() and NAME.fullmatch(d.name)}
        for name in sorted(names | set(cfg.channel_names)):
            self.rollout(name).open()  # robots polling an empty channel report in: the fleet

    def rollout(self, name: str) -> Rollout:
        if not NAME.fullmatch(name):
            raise HTTPException(404, f"no channel {name!r}")
        with self._lock:
            if name not in self.rollouts:
                self.rollouts[name] = Rollout(
                    self.cfg.channels / name, self.cfg.key,
                    report_url=f"{self.cfg.public_url}/channels/{name}/report",
                    lifetime_s=self.cfg.doc_lifetime_s)
            return self.rollouts[name]

    def runs(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.cfg.runs.glob(f"*/{SUMMARY}"), reverse=True)[:50]:
            try:
                s = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            out.append({k: s.get(k) for k in ("run_id", "date", "status", "provider",
                                               "failed_stage", "error", "connection_mode",
                                               "terminated", "samples", "bundle", "cost_usd")})
        return out

    def start_cycle(self) -> str:
        if not self.cfg.cycle_args:
            raise HTTPException(409, "serve was started without --cycle-args: nothing to run")
        if self.cycle is not None and self.cycle.poll() is None:
            raise HTTPException(409, f"run {self.cycle_id} is still going")
        run_id = new_run_id()
        argv = [sys.executable, "-m", "brain_cloud", "full-cycle", *self.cfg.cycle_args,
                "--runs", str(self.cfg.runs), "--run-id", run_id]
        (self.cfg.runs / run_id).mkdir(parents=True)
        out = open(self.cfg.runs / run_id / "orchestrator.out", "wb")
        self.cycle = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        self.cycle_id = run_id
        return run_id

    def cycle_running(self) -> bool:
        return self.cycle is not None and self.cycle.poll() is None

    def keep_documents_fresh(self, stop: threading.Event) -> None:
        """Re-sign every channel's document before it expires, until `stop`."""
        while not stop.wait(self.cfg.refresh_every_s):
            with self._lock:
                rollouts = list(self.rollouts.values())
            for r in rollouts:
                try:
                    if r.refresh_if_due():
                        log.info("channel %s re-signed (seq %d)", r.name, r.record["seq"])
                except OSError as e:  # the next round tries again; say why meanwhile
                    log.warning("channel %s: cannot re-sign: %s", r.name, e)

    def stop(self) -> None:
        if self.cycle_running():
            assert self.cycle is not None
            self.cycle.terminate()  # it terminates its machine and writes its summary
            try:
                self.cycle.wait(60)
            except subprocess.TimeoutExpired:
                self.cycle.kill()


def make_app(cfg: ServeConfig) -> FastAPI:
    server = Server(cfg)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        fresh = threading.Thread(target=server.keep_documents_fresh, args=(stop,),
                                 name="channel-refresh", daemon=True)
        fresh.start()
        yield
        stop.set()
        server.stop()  # a running cycle terminates its machine and writes its summary

    app = FastAPI(title="brain-cloud serve", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.server = server

    def admin(request: Request) -> None:
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else \
            request.query_params.get("token", "")
        if not secrets.compare_digest(given.encode(), cfg.token.encode()):
            raise HTTPException(401, "the admin token is required (printed by brain-cloud "
                                     "serve at start)")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        if name not in ("app.js", "style.css"):
            raise HTTPException(404)
        return FileResponse(STATIC / name)

    @app.post("/channels/{name}/report")
    async def report(name: str, request: Request) -> dict[str, Any]:
        if len(await request.body()) > 16 << 10:
            raise HTTPException(413, "report too large")
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            raise HTTPException(422, "a report is a JSON object") from None
        rollout = server.rollout(name)
        try:
            status = rollout.report(body)
        except FleetError as e:
            raise HTTPException(422, str(e)) from None
        return {"ok": True, "state": status["state"]}

    @app.get("/channels/{name}/{path:path}")
    def channel_file(name: str, path: str) -> FileResponse:
        if not NAME.fullmatch(name) or not SERVED.fullmatch(path):
            raise HTTPException(404)
        f = cfg.channels / name / path
        if not f.is_file():
            raise HTTPException(404)
        media = "application/json" if path.endswith(".json") else "application/octet-stream"
        return FileResponse(f, media_type=media)  # Range requests answered with 206

    @app.get("/api/status", dependencies=[Depends(admin)])
    def status() -> dict[str, Any]:
        return {"channels": [r.status() for r in list(server.rollouts.values())],
                "runs": server.runs(),
                "cycle": {"run_id": server.cycle_id, "running": server.cycle_running(),
                          "configured": bool(cfg.cycle_args)}}

    @app.post("/api/channels/{name}/publish", dependencies=[Depends(admin)])
    async def publish(name: str, request: Request, stages: str = "10,25,50,100",
                      threshold: float = 0.25) -> dict[str, Any]:
        rollout = server.rollout(name)
        tmp = cfg.channels / f".upload-{secrets.token_hex(6)}.bundle"
        size = 0
        try:
            with open(tmp, "wb") as fh:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > MAX_BUNDLE:
                        raise HTTPException(413, "bundle too large")
                    fh.write(chunk)
            try:
                steps = tuple(int(s) for s in stages.split(","))
                return await asyncio.to_thread(rollout.publish, tmp, stages=steps,
                                               threshold=threshold)
            except (FleetError, ValueError, KeyError, OSError) as e:
                raise HTTPException(422, f"cannot publish: {e}") from None
        finally:
            tmp.unlink(missing_ok=True)

    @app.post("/api/channels/{name}/halt", dependencies=[Depends(admin)])
    def halt(name: str, rollback: bool = True) -> dict[str, Any]:
        server.rollout(name).halt(rollback=rollback, why="by the operator")
        return server.rollout(name).status()

    @app.post("/api/full-cycle", dependencies=[Depends(admin)])
    def full_cycle() -> dict[str, Any]:
        return {"run_id": server.start_cycle()}

    @app.get("/api/runs/{run_id}/log", response_class=EventSourceResponse,
             dependencies=[Depends(admin)])
    async def run_log(run_id: str, request: Request) -> AsyncIterator[ServerSentEvent]:
        if not RUN_ID.fullmatch(run_id) or not (cfg.runs / run_id).is_dir():
            raise HTTPException(404, f"no run {run_id}")
        log_path = cfg.runs / run_id / "run.log"
        summary = cfg.runs / run_id / SUMMARY
        # Each line's id is the log offset after it: a reconnecting EventSource sends it back
        # as Last-Event-ID and continues from there instead of from the start.
        last = request.headers.get("last-event-id", "0")
        offset = int(last) if last.isdigit() else 0
        while not await request.is_disconnected():
            new = b""
            if log_path.exists():
                with open(log_path, "rb") as fh:
                    fh.seek(offset)
                    new = fh.read()
                cut = new.rfind(b"\n") + 1  # whole lines only
                new, offset = new[:cut], offset + cut
            at = offset - len(new)
            for line in new.splitlines(keepends=True):
                at += len(line)
                yield ServerSentEvent(raw_data=line.decode(errors="replace").rstrip("\n"),
                                      event="line", id=str(at))
            done = _final(summary)
            if done is not None and not new and not (
                    server.cycle_id == run_id and server.cycle_running()):
                yield ServerSentEvent(data=done, event="end")
                return
            await asyncio.sleep(0.3)

    return app


def _final(summary: Path) -> dict[str, Any] | None:
    try:
        s = json.loads(summary.read_text())
    except (OSError, ValueError):
        return None
    if s.get("status") == "running":
        return None
    return {"status": s.get("status"), "failed_stage": s.get("failed_stage"),
            "error": s.get("error"), "bundle": s.get("bundle")}


def run(cfg: ServeConfig, host: str, port: int) -> None:
    import uvicorn

    print(f"brain-cloud serve: {cfg.root} on http://{host}:{port}/", flush=True)
    print(f"  page: http://{host}:{port}/#token={cfg.token}", flush=True)
    print(f"  channels for robots: {cfg.public_url}/channels/<name>/channel.json", flush=True)
    if cfg.cycle_args:
        print(f"  full cycle: brain-cloud full-cycle {shlex.join(cfg.cycle_args)}", flush=True)
    uvicorn.run(make_app(cfg), host=host, port=port, log_level="warning")
