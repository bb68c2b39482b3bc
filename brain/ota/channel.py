"""Following a fleet channel (ota/SPEC.md, section 6): poll a signed channel document, take the
bundle it offers when this robot's bucket is in the rollout, install it through the normal OTA
path, report what happened, and roll back when the channel halts a bundle that runs here.

A thread of the daemon, never the control loop's: it sleeps between polls and spends its time in
HTTP and in the OTA manager, which does its heavy work (verification) in a worker process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from brain.config import followed_channel
from brain.durable import atomic_write_json, read_json, sha256_file
from brain.ota import keys as keyfiles
from brain.ota.bundle import BundleError, parse_utc
from brain.ota.schema import SCHEMA_PATH

log = logging.getLogger(__name__)

CHANNEL_SCHEMA = SCHEMA_PATH.with_name("channel.schema.json")
SIGNATURE_SUFFIX = ".sig"
MAX_DOC_BYTES = 64 << 10
TRIAL_POLL_S = 0.25


class ChannelError(ValueError):
    """The channel document cannot be trusted or used; the message says why."""


def bucket(robot_id: str, bundle_id: str) -> int:
    """0..99: where this robot stands in the rollout of this bundle."""
    return int(hashlib.sha256(f"{robot_id}/{bundle_id}".encode()).hexdigest()[:8], 16) % 100


@functools.cache
def _validator() -> Any:
    import jsonschema

    schema = json.loads(CHANNEL_SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def verify_document(raw: bytes, signature: bytes, keyring: keyfiles.Keyring,
                    now: float | None = None, channel: str | None = None) -> dict[str, Any]:
    """The channel document, once its signature (a trusted publisher key), shape, expiry and
    (given `channel`) its channel check out: a publisher-signed document of another channel
    is not this robot's to obey."""
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise ChannelError(f"channel.json is not JSON: {e}") from None
    errors = sorted(_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "(top)"
        raise ChannelError(f"channel.json: {where}: {errors[0].message}"[:300])
    key = keyring.lookup("publisher", doc["key_id"])
    if key is None:
        raise ChannelError(f"channel.json is signed by {doc['key_id']}, not a trusted "
                           "publisher key")
    if len(signature) != 64 or not keyfiles.verify(key, signature, raw):
        raise ChannelError("channel.json's signature does not verify")
    if parse_utc(doc["expires"]) < (now if now is not None else time.time()):
        raise ChannelError(f"channel.json expired at {doc['expires']}")
    if channel is not None and doc["channel"] != channel:
        raise ChannelError(f"channel.json is channel {doc['channel']!r}'s; this robot follows "
                           f"{channel!r}")
    return dict(doc)


class ChannelFollower:
    """Polls `url` and acts on it through `ota` (an OtaManager)."""

    def __init__(self, url: str, ota: Any, robot_id: str, state_file: Path, *,
                 poll_s: float, jitter_s: float, channel: str = "") -> None:
        self.url = url
        self.channel = followed_channel(url, channel)
        if not self.channel:
            raise ValueError(f"which channel {url} serves is not known: set ota.channel")
        self.ota = ota
        self.robot_id = robot_id
        self.state_file = state_file
        self.poll_s, self.jitter_s = poll_s, jitter_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.state = self._load_state()

    def _load_state(self) -> dict[str, Any]:
        """{"seqs": {channel: highest seq seen}, "failed": {bundle id: why}}. The seq is kept
        per channel, so following another channel starts from its own (an older file's one
        seq is taken as this channel's: never lower than what was seen)."""
        try:
            st = read_json(self.state_file)
            if isinstance(st, dict):
                seqs = {str(k): int(v) for k, v in dict(st.get("seqs", {})).items()}
                if "seq" in st and self.channel not in seqs:
                    seqs[self.channel] = int(st["seq"])
                return {"seqs": seqs, "failed": dict(st.get("failed", {}))}
        except (FileNotFoundError, ValueError, TypeError):
            pass
        return {"seqs": {}, "failed": {}}

    @property
    def seq(self) -> int:
        return int(self.state["seqs"].get(self.channel, 0))

    def _save_state(self) -> None:
        atomic_write_json(self.state_file, self.state)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ota-channel", daemon=True)
        self._thread.start()
        log.info("following the OTA channel %s every %g s (+ up to %g s)", self.url,
                 self.poll_s, self.jitter_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
                self.last_error = None
            except Exception as e:  # the next poll tries again; the reason is visible
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("OTA channel %s: %s", self.url, self.last_error)
            self._stop.wait(self.poll_s + random.uniform(0, self.jitter_s))

    # -- one poll ---------------------------------------------------------------------------------
    def _get(self, url: str) -> bytes:
        import httpx

        with httpx.stream("GET", url, timeout=30, follow_redirects=True) as r:
            if r.status_code != 200:
                raise ChannelError(f"GET {url} answered {r.status_code}")
            data = b""
            for chunk in r.iter_bytes():
                data += chunk
                if len(data) > MAX_DOC_BYTES:
                    raise ChannelError(f"{url} is larger than {MAX_DOC_BYTES} bytes")
            return data

    def poll_once(self) -> dict[str, Any]:
        """Fetch, verify and act on the document once; returns what was done."""
        raw = self._get(self.url)
        signature = self._get(self.url + SIGNATURE_SUFFIX)
        try:
            doc = verify_document(raw, signature, self.ota.keyring(), channel=self.channel)
            if doc["seq"] < self.seq:
                raise ChannelError(f"channel seq {doc['seq']} is older than {self.seq} already "
                                   "seen (a replayed document)")
        except ChannelError as e:
            self._report(None, "refused", reason=str(e))
            raise
        if doc["seq"] > self.seq:
            self.state["seqs"][self.channel] = doc["seq"]
            self._save_state()
        action = self._act(doc)
        self._report(doc, action["event"], result=action.get("result"),
                     reason=action.get("reason"))
        return action

    def _act(self, doc: dict[str, Any]) -> dict[str, Any]:
        bundle, rollout = doc["bundle"], doc["rollout"]
        status = self.ota.status()
        active = (status.get("active") or {}).get("bundle_id")
        if bundle is None:
            return {"event": "seen"}
        bid = bundle["id"]
        if rollout["halt"]:
            if rollout["rollback"] and active == bid and status.get("phase") == "committed":
                log.warning("channel halted %s: rolling back", bid)
                self.ota.rollback()
                return {"event": "rolled_back", "result": "rolled_back",
                        "reason": "halted by the channel"}
            return {"event": "seen"}
        if active == bid or bid in self.state["failed"] or \
                status.get("phase") in ("staged", "trial"):
            return {"event": "seen"}
        if bucket(self.robot_id, bid) >= rollout["percent"]:
            return {"event": "seen"}
        return self._install(doc, bundle)

    def _install(self, doc: dict[str, Any], bundle: dict[str, Any]) -> dict[str, Any]:
        bid = bundle["id"]
        log.info("channel %s offers %s to this robot (bucket %d < %d%%): installing",
                 doc["channel"], bid, bucket(self.robot_id, bid), doc["rollout"]["percent"])
        path = self.ota.download(urljoin(self.url, bundle["path"]))
        try:
            if path.stat().st_size != bundle["size"] or \
                    sha256_file(path) != bundle["sha256"]:
                raise ChannelError(f"{bid}: the download does not match the channel's size "
                                   "and sha256")
            self.ota.install(path)
        except (ChannelError, BundleError) as e:
            self._fail(bid, "rejected", str(e))
            return {"event": "installed", "result": "rejected", "reason": str(e)}
        finally:
            path.unlink(missing_ok=True)
        while not self._stop.is_set():  # the trial runs on the OTA manager's thread
            st = self.ota.status()
            if st.get("phase") not in ("staged", "trial"):
                break
            time.sleep(TRIAL_POLL_S)
        st = self.ota.status()
        if (st.get("active") or {}).get("bundle_id") == bid and st.get("phase") == "committed":
            return {"event": "installed", "result": "committed"}
        reason = (st.get("last_error") or {}).get("reason") or st.get("phase") or "unknown"
        self._fail(bid, "rolled_back", reason)
        return {"event": "installed", "result": "rolled_back", "reason": reason}

    def _fail(self, bundle_id: str, result: str, reason: str) -> None:
        self.state["failed"][bundle_id] = {"result": result, "reason": reason, "t": time.time()}
        self._save_state()

    def _report(self, doc: dict[str, Any] | None, event: str, *, result: str | None = None,
                reason: str | None = None) -> None:
        url = (doc or {}).get("report_url")
        if not url:
            return
        import httpx

        st = self.ota.status()
        body = {"robot_id": self.robot_id, "channel": doc["channel"] if doc else None,
                "seq": doc["seq"] if doc else None,
                "bundle_id": (doc["bundle"] or {}).get("id") if doc else None, "event": event,
                "result": result, "reason": reason,
                "active": (st.get("active") or {}).get("bundle_id"), "phase": st.get("phase")}
        try:
            httpx.post(url, json=body, timeout=10)
        except httpx.HTTPError as e:
            log.warning("could not report to %s: %s", url, type(e).__name__)

