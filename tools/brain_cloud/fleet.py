"""Channels and staged rollouts (ota/SPEC.md, section 6), the publisher's side.

A channel directory is what any static host can serve: `channel.json`, its signature and the
immutable bundles. Beside them, `rollout.json` is the publisher's own record (never served): the
stages, the failure threshold, and what each robot last reported. `brain-cloud serve` feeds the
robots' reports to `Rollout.report`, which advances the stage when every robot in it has
committed the bundle and halts the rollout, telling the robots to roll back, when the share of
failures among the robots that tried it reaches the threshold.

A signed document expires (`lifetime_s`, 7 days by default) so that a stale one cannot be
replayed forever; so it is re-signed, unchanged but with a new seq, once less than half its
lifetime is left (`refresh_if_due`): `brain-cloud serve` checks every channel every
`--refresh-every` seconds, and a static host runs `brain-cloud channel refresh --dir` from a
timer (docs/cloud.md). A robot that polled a quiet channel for a week would otherwise refuse it.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brain.durable import atomic_write_bytes, atomic_write_json, read_json, sha256_file
from brain.ota import keys as keyfiles
from brain.ota.bundle import parse_utc, utc
from brain.ota.channel import SIGNATURE_SUFFIX, bucket
from brain_cloud.push import PushError, manifest_of

DOC = "channel.json"
RECORD = "rollout.json"
STAGES = (10, 25, 50, 100)
DEFAULT_THRESHOLD = 0.25
DOC_LIFETIME_S = 7 * 86400
FAILED = ("rolled_back", "rejected")


class FleetError(ValueError):
    """A publish or a change to a rollout cannot be done; the message says why."""


class Rollout:
    """One channel directory and its rollout record; every change re-signs the document."""

    def __init__(self, directory: Path, key: Path, *, report_url: str = "",
                 lifetime_s: float = DOC_LIFETIME_S,
                 clock: Callable[[], float] = time.time) -> None:
        if not lifetime_s > 0:
            raise FleetError(f"a document's lifetime must be positive, got {lifetime_s}")
        self.dir = Path(directory)
        self.lifetime_s = lifetime_s
        self.clock = clock
        self.name = self.dir.name
        self.private = keyfiles.load_private(key)
        self.key_id = keyfiles.key_id(self.private.public_key())
        self.report_url = report_url
        self._lock = threading.Lock()
        self.record: dict[str, Any] = self._load()

    def _load(self) -> dict[str, Any]:
        try:
            rec = read_json(self.dir / RECORD)
            if isinstance(rec, dict):
                return rec
        except (FileNotFoundError, ValueError):
            pass
        return {"channel": self.name, "seq": 0, "bundle": None, "stages": list(STAGES),
                "stage": 0, "threshold": DEFAULT_THRESHOLD, "halted": False, "rollback": False,
                "robots": {}, "history": []}

    def open(self) -> None:
        """Make sure the channel has a signed document (an empty one at first) that is not
        about to expire, with this server's report URL."""
        with self._lock:
            self._write()

    # -- publishing -------------------------------------------------------------------------------
    def publish(self, bundle: Path, *, stages: tuple[int, ...] = STAGES,
                threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
        """Offer `bundle` from the first stage on."""
        if not stages or list(stages) != sorted(set(stages)) or not 0 < stages[0] or \
                stages[-1] != 100:
            raise FleetError(f"stages must rise to 100, e.g. 10 25 50 100 (got {stages})")
        if not 0 < threshold <= 1:
            raise FleetError(f"the failure threshold must be in (0, 1], got {threshold}")
        try:
            manifest = manifest_of(bundle)
        except PushError as e:
            raise FleetError(str(e)) from None
        bid = str(manifest["bundle_id"])
        dest = self.dir / "bundles" / f"{bid}.bundle"
        sha = sha256_file(bundle)
        if dest.exists() and sha256_file(dest) != sha:
            raise FleetError(f"{dest.name} is already published with other contents; bundles "
                             "are immutable: publish a new release")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            tmp = dest.with_name(f".{dest.name}.tmp")
            shutil.copyfile(bundle, tmp)
            os.replace(tmp, dest)
        with self._lock:
            self.record.update(bundle={"id": bid, "path": f"bundles/{dest.name}", "sha256": sha,
                                       "size": dest.stat().st_size,
                                       "release": int(manifest["release"])},
                               stages=list(stages), stage=0, threshold=threshold,
                               halted=False, rollback=False)
            self._event(f"published {bid} at {stages[0]}%")
            self._write()
        return self.document()

    def halt(self, rollback: bool = True, why: str = "by hand") -> dict[str, Any]:
        with self._lock:
            self._halt(rollback, why)
        return self.document()

    def _halt(self, rollback: bool, why: str) -> None:
        self.record.update(halted=True, rollback=rollback)
        self._event(f"halted ({why})" + ("; robots told to roll back" if rollback else ""))
        self._write()

    def _event(self, text: str) -> None:
        self.record["history"].append({"t": time.time(), "event": text})
        self.record["history"] = self.record["history"][-200:]

    def percent(self) -> int:
        return int(self.record["stages"][self.record["stage"]]) if self.record["bundle"] else 0

    def document(self) -> dict[str, Any]:
        now = self.clock()
        doc: dict[str, Any] = {
            "format": 1, "channel": self.name, "seq": self.record["seq"], "issued": utc(now),
            "expires": utc(now + self.lifetime_s), "key_id": self.key_id,
            "bundle": self.record["bundle"],
            "rollout": {"percent": self.percent(), "halt": bool(self.record["halted"]),
                        "rollback": bool(self.record["rollback"])}}
        if self.report_url:
            doc["report_url"] = self.report_url
        return doc

    def _write(self) -> None:
        """Raise seq, write and sign the document (signature first: a robot that reads the new
        document with the old signature refuses it and tries again at its next poll)."""
        self.record["seq"] += 1
        doc = self.document()
        self.record["expires_at"] = parse_utc(doc["expires"])
        raw = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.dir / (DOC + SIGNATURE_SUFFIX), keyfiles.sign(self.private, raw))
        atomic_write_bytes(self.dir / DOC, raw)
        atomic_write_json(self.dir / RECORD, self.record)

    def refresh_if_due(self) -> bool:
        """Re-sign the document, unchanged but with a new seq, once less than half its
        lifetime is left (or it has none on record). True when it did."""
        with self._lock:
            left = float(self.record.get("expires_at", 0)) - self.clock()
            if left >= self.lifetime_s / 2:
                return False
            self._write()
        return True

    # -- the robots' reports ----------------------------------------------------------------------
    def report(self, body: dict[str, Any]) -> dict[str, Any]:
        rid = str(body.get("robot_id") or "")
        if not rid.isalnum() or len(rid) > 64:
            raise FleetError("robot_id must be alphanumeric")
        with self._lock:
            robot = self.record["robots"].setdefault(rid, {"results": {}})
            robot.update(last_seen=time.time(), active=body.get("active"),
                         phase=body.get("phase"), last_event=body.get("event"))
            bid = body.get("bundle_id")
            if body.get("event") in ("installed", "rolled_back") and bid:
                robot["results"][bid] = {"result": body.get("result"),
                                         "reason": body.get("reason"), "t": time.time()}
                self._event(f"{rid}: {bid} {body.get('result')}"
                            + (f" ({body.get('reason')})" if body.get("reason") else ""))
            elif bid and body.get("active") == bid and bid not in robot["results"]:
                robot["results"][bid] = {"result": "committed", "reason": "found running",
                                         "t": time.time()}
            self._decide()
            atomic_write_json(self.dir / RECORD, self.record)
        return self.status()

    def members(self) -> list[str]:
        """Robots seen so far whose bucket is inside the current stage."""
        bundle = self.record["bundle"]
        if bundle is None:
            return []
        return [r for r in self.record["robots"] if bucket(r, bundle["id"]) < self.percent()]

    def _decide(self) -> None:
        bundle = self.record["bundle"]
        if bundle is None or self.record["halted"]:
            return
        bid = bundle["id"]
        results = {r: self.record["robots"][r]["results"].get(bid, {}).get("result")
                   for r in self.record["robots"]}
        tried = [r for r, res in results.items() if res is not None]
        failed = [r for r in tried if results[r] in FAILED]
        if tried and len(failed) / len(tried) >= self.record["threshold"]:
            self._halt(True, f"{len(failed)} of {len(tried)} robots failed {bid}: "
                             f"{', '.join(failed)}")
            return
        while all(results[r] == "committed" for r in self.members()) and \
                self.record["stage"] < len(self.record["stages"]) - 1:
            self.record["stage"] += 1
            self._event(f"{bid}: every robot in the stage committed; now "
                        f"{self.percent()}%")
            self._write()

    def status(self) -> dict[str, Any]:
        bundle = self.record["bundle"]
        robots = []
        for rid, r in sorted(self.record["robots"].items()):
            res = r["results"].get(bundle["id"]) if bundle else None
            robots.append({"id": rid, "bucket": bucket(rid, bundle["id"]) if bundle else None,
                           "in_stage": rid in self.members(), "active": r.get("active"),
                           "phase": r.get("phase"), "last_seen": r.get("last_seen"),
                           "result": (res or {}).get("result"),
                           "reason": (res or {}).get("reason")})
        state = "empty" if bundle is None else "halted" if self.record["halted"] else \
            "complete" if self.percent() == 100 and robots and all(
                r["result"] == "committed" for r in robots) else "rolling out"
        return {"channel": self.name, "seq": self.record["seq"], "state": state,
                "bundle": bundle, "percent": self.percent(), "stages": self.record["stages"],
                "threshold": self.record["threshold"], "halted": self.record["halted"],
                "robots": robots, "history": self.record["history"][-20:]}

