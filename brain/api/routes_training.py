"""A training job's live events (GET /api/v1/training/{id}/events): Server-Sent Events.

The one training route that is not a command: it streams. Named events, each with a JSON
payload:

- `status`     {status, reason, step, max_steps, progress} whenever one of them changes;
- `metric`     {step, t, loss, val_loss, lr, steps_per_s} for every logged step (from the
               first, so a page that connects late draws the whole curve);
- `checkpoint` {step, path, sha256, t};
- `log`        {seq, t, level, message};
- `result`     the job as `training.get` returns it (gate verdict included), once it has
               finished; then the stream ends.

The job store is read (read-only) in a worker thread every half second. FastAPI's own SSE
support encodes the events (the same as /telemetry), so no hand-written wire format. Browsers
authenticate with `?ticket=` (EventSource cannot send headers), other clients with a token.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.sse import EventSourceResponse, ServerSentEvent

from brain.api.auth import ctx_of, require_client_or_ticket

router = APIRouter(tags=["training"])
POLL_S = 0.5
JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class _Cursor:
    """What this stream has sent so far."""

    def __init__(self) -> None:
        self.status: tuple[Any, ...] | None = None
        self.step = -1
        self.log_seq = 0
        self.checkpoints: set[str] = set()


def _poll(train_dir: Path, job_id: str, cur: _Cursor) -> tuple[list[ServerSentEvent], bool]:
    from brain.train import jobs

    job = jobs.describe(train_dir, job_id)
    out: list[ServerSentEvent] = []
    key = (job["status"], job.get("reason"), job.get("step"), job.get("progress"))
    if key != cur.status:
        cur.status = key
        out.append(ServerSentEvent(event="status", data={
            "status": job["status"], "reason": job.get("reason"), "step": job.get("step", 0),
            "max_steps": job.get("max_steps"), "progress": job.get("progress", 0.0)}))
    if job["status"] == "submitted":
        return out, False
    store = jobs.JobStore.reader(train_dir)
    if store is None:
        return out, False
    try:
        for m in store.metrics(job_id, after_step=cur.step):
            cur.step = m["step"]
            out.append(ServerSentEvent(event="metric", data=m, id=str(m["step"])))
        for c in store.checkpoints(job_id):
            if c["path"] not in cur.checkpoints:
                cur.checkpoints.add(c["path"])
                out.append(ServerSentEvent(event="checkpoint", data=c))
        for row in store.logs(job_id, cur.log_seq):
            cur.log_seq = row["seq"]
            out.append(ServerSentEvent(event="log", data=row))
    finally:
        store.close()
    done = job["status"] not in (*jobs.ACTIVE, "submitted")
    if done:
        out.append(ServerSentEvent(event="result", data=job))
    return out, done


async def existing_job(job_id: str, request: Request,
                       _client: str = Depends(require_client_or_ticket)) -> str:
    """The job id, checked before the stream starts (422 malformed, 404 unknown), and only
    for a paired client: an unpaired caller gets 401 whatever the id, so it cannot learn
    which jobs exist."""
    from brain.train import jobs

    if not JOB_ID.fullmatch(job_id):
        raise HTTPException(422, "a job id is 1-64 of A-Z a-z 0-9 . _ -")
    try:
        await run_in_threadpool(jobs.describe, ctx_of(request).service.cfg.layout.train, job_id)
    except jobs.NoSuchJob as e:
        raise HTTPException(404, str(e)) from None
    return job_id


@router.get("/training/{job_id}/events", response_class=EventSourceResponse,
            responses={401: {"description": "Not paired"}, 404: {"description": "No such job"}})
async def training_events(request: Request, job_id: str = Depends(existing_job),
                          client: str = Depends(require_client_or_ticket)
                          ) -> AsyncIterator[ServerSentEvent]:
    """Live progress of a training job: status, metrics, checkpoints, log lines, then the
    result (see the module's description of each event)."""
    ctx = ctx_of(request)
    train_dir = ctx.service.cfg.layout.train
    since = ctx.pairing.clock()
    cur = _Cursor()
    while not ctx.closing.is_set() and ctx.pairing.still_paired(client, since):
        events, done = await run_in_threadpool(_poll, train_dir, job_id, cur)
        for event in events:
            yield event
        if done:
            return
        await asyncio.sleep(POLL_S)
