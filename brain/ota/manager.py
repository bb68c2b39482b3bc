"""The OTA manager: installs verified bundles into the running daemon, trials them, commits or
rolls back, and recovers whatever a kill left (ota/SPEC.md section 5).

Everything here runs beside the control loop, never in it: verification and staging on the
caller's thread (a control-socket or API worker), the trial on the manager's own thread. The
loop only ever sees `ActiveModel.swap` (an attribute swap under the policy lock) and a new
`SafetyLimits` object, so it never waits on a load.

Slots: `active` (driving now), `lkg` (last known good: the committed bundle to fall back to),
`previous` (what was committed before it: `rollback` returns there), `candidate` (in trial).
The factory bundle (the seed policy, trusted because it ships with the software) is always in
the store and is never garbage-collected.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from brain import __version__
from brain.control.model import ModelError, load_spec
from brain.control.policy import ActiveModel, Policy, PolicyRunner, load_policy
from brain.control.safety import SafetyLimits
from brain.durable import fsync_dir
from brain.ota import keys as keyfiles
from brain.ota.bundle import (
    MANIFEST,
    BundleError,
    Expectations,
    StagedBundle,
    _remove_tree,
    model_files,
    read_golden,
    sha256_file,
    stage_in_worker,
    verify_stored,
)
from brain.ota.slots import ModelPaths, SlotState, remove_staging, slot, write_failure
from brain.procs import run_niced

if TYPE_CHECKING:
    from brain.config import Config
    from brain.control.loop import ControlLoop

log = logging.getLogger(__name__)
T = TypeVar("T")

FACTORY_PREFIX = "factory-"
LATENCY_RUNS = 40
KILL_AT_VAR = "BRAIN_TEST_OTA_KILL_AT"
DOWNLOAD_DEADLINE_S = 1800.0  # a whole URL download (a slow link resumes on the next install)
MAX_REDIRECTS = 5  # within the URL's own origin
DISK_RESERVE_BYTES = 64 << 20  # left free below an upload or download


class TrialFailed(Exception):
    def __init__(self, reason: str, detail: str, transient: bool = False) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.transient = reason, detail, transient


class OtaError(Exception):
    """A refused OTA request that is not about a bundle's content (nothing to roll back...)."""


class OtaManager:
    def __init__(self, cfg: Config, model: ActiveModel, loop: ControlLoop,
                 runner: PolicyRunner, robot_id: str, *,
                 kill_at: str = "") -> None:
        self.cfg = cfg
        self.model = model
        self.loop = loop
        self.runner = runner
        self.robot_id = robot_id
        self.paths = ModelPaths(cfg.layout.model)
        self.base_limits = loop.limits  # the configured limits; a bundle may only tighten them
        self.kill_at = kill_at
        self.state = SlotState(self.paths, self._hook)
        # `_lock` guards changes of the slot state and is only ever held briefly; `_installing`
        # is held for a whole install (verification can take minutes), so a rollback never
        # waits behind one, and only one install runs at a time.
        self._lock = threading.Lock()
        self._installing = threading.Lock()
        self._transferring = threading.Lock()  # one bundle upload or download at a time
        self._trial: threading.Thread | None = None
        self._abort = threading.Event()
        self._commit_early = threading.Event()
        self._loaded: dict[str, Policy] = {}  # bundle id -> loaded policy (active, lkg)
        self.events: list[dict[str, Any]] = []  # recent OTA events for the page

    # -- test hook ---------------------------------------------------------------------------------
    def _hook(self, point: str) -> None:
        if self.kill_at and point == self.kill_at:
            log.warning("test hook: SIGKILL at %s", point)
            os.kill(os.getpid(), signal.SIGKILL)

    # -- start-up ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Recover (staging, an interrupted trial), make sure the factory bundle is there, and
        load the active bundle (re-hashed) into the model holder."""
        for p in (self.paths.root, self.paths.store, self.paths.staging):
            p.mkdir(parents=True, exist_ok=True)
        removed = remove_staging(self.paths)
        if removed:
            log.warning("removed half-staged bundles: %s", ", ".join(removed))
        factory = self._ensure_factory()
        st = self.state
        if st["phase"] == "trial":
            cand = (st["candidate"] or {}).get("bundle_id")
            self._fail_record(cand, "interrupted", "the daemon stopped during the trial")
            st.commit("rollback", "restarted during the trial", phase="rolled_back",
                      candidate=None, attempts_left=0,
                      last_error={"reason": "interrupted", "bundle_id": cand,
                                  "detail": "the daemon stopped during the trial"})
        elif st["phase"] == "staged":
            cand = (st["candidate"] or {}).get("bundle_id")
            st.commit("discard", "restarted before the trial began", phase="idle",
                      candidate=None, last_error={"reason": "interrupted", "bundle_id": cand,
                                                  "detail": "restarted before the trial began"})
        if st["active"] is None:
            st.commit("factory", "first start: the seed policy is the factory bundle",
                      phase="idle", active=factory, lkg=factory)
        for ref in (st["active"], st["lkg"], factory):
            try:
                policy = self._load_verified(ref["bundle_id"])
            except (ModelError, BundleError, OSError) as e:
                log.error("bundle %s cannot be loaded (%s); falling back", ref["bundle_id"], e)
                continue
            if ref is not st["active"]:
                st.commit("fallback", f"{st['active']['bundle_id']} unusable",
                          phase="rolled_back", active=ref,
                          last_error={"reason": "unusable", "bundle_id":
                                      st["active"]["bundle_id"], "detail": "failed re-hash"})
            self._activate(policy, ref["bundle_id"])
            return
        log.error("no usable bundle, not even the factory one: autonomous mode unavailable")

    def _ensure_factory(self) -> dict[str, Any]:
        """The seed policy (or policy.model_dir) as the factory bundle in the store."""
        from brain.rig import resolve_model_dir

        source = resolve_model_dir(self.cfg)
        spec = load_spec(source)
        bundle_id = f"{FACTORY_PREFIX}{spec.id}".lower()
        dest = self.paths.bundle(bundle_id)
        ref = {"bundle_id": bundle_id, "version": spec.version, "release": 0,
               "origin": "factory", "name": spec.id}
        if dest.exists():
            return ref
        work = self.paths.staging / f"{bundle_id}.{os.urandom(4).hex()}"
        work.mkdir(parents=True)
        files = []
        for path, role in sorted(model_files(source).items()):
            shutil.copyfile(source / path, work / path)
            files.append({"path": path, "sha256": sha256_file(work / path),
                          "size": (work / path).stat().st_size, "role": role})
        manifest = {"format": "brain-factory-bundle/1", "bundle_id": bundle_id,
                    "name": spec.id, "version": spec.version, "release": 0, "origin": "factory",
                    "files": files, "preferred_backends": list(spec.files),
                    "safety": None}
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        for p in work.iterdir():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
            os.chmod(p, 0o444)
        fsync_dir(work)
        os.chmod(work, 0o555)
        os.rename(work, dest)
        fsync_dir(self.paths.store)
        log.info("factory bundle %s made from %s", bundle_id, source)
        return ref

    # -- loading -----------------------------------------------------------------------------------
    def _manifest(self, bundle_id: str) -> dict[str, Any]:
        doc = json.loads((self.paths.bundle(bundle_id) / MANIFEST).read_bytes())
        if not isinstance(doc, dict):
            raise BundleError("malformed-manifest", f"{bundle_id}: stored manifest unreadable")
        return doc

    def _load_verified(self, bundle_id: str) -> Policy:
        """Re-hash every file of a stored bundle, then load it with the first backend that
        is both preferred by the bundle and available here."""
        d = self.paths.bundle(bundle_id)
        manifest = self._manifest(bundle_id)
        self._offload(verify_stored, str(d))
        backends = list(manifest.get("preferred_backends") or ["onnxruntime"])
        if self.cfg.policy.backend in backends:
            backends.remove(self.cfg.policy.backend)
            backends.insert(0, self.cfg.policy.backend)
        last: Exception | None = None
        for backend in backends:
            try:
                return load_policy(str(d), backend, self.cfg.policy.threads, label=bundle_id)
            except ModelError as e:
                last = e
        raise ModelError(f"{bundle_id}: no backend could load it ({last})")

    def _offload(self, fn: Callable[..., T], *args: Any) -> T:
        """Hashing hundreds of megabytes in the daemon's process stalled its control loop by
        1-2 ms (bench/ota.py): once the loop runs, such work goes to a niced worker process
        (brain.procs) that dies with the daemon."""
        return run_niced(fn, *args) if self.loop.running else fn(*args)

    def _limits_for(self, bundle_id: str) -> SafetyLimits:
        safety = self._manifest(bundle_id).get("safety")
        if not safety:
            return self.base_limits
        return self.base_limits.tighten(SafetyLimits(safety["max_steering"],
                                                     safety["max_throttle"],
                                                     safety["max_reverse"]))

    def _activate(self, policy: Policy, bundle_id: str) -> None:
        """Between two ticks: the loop reads the new limits and the model holder at once."""
        limits = self._limits_for(bundle_id)
        self.loop.limits = limits
        self.model.swap(policy)
        self._loaded[bundle_id] = policy
        log.info("active model: %s", bundle_id)

    # -- installing --------------------------------------------------------------------------------
    def keyring(self) -> keyfiles.Keyring:
        o = self.cfg.ota
        device = None
        if o.allow_local_promotion:
            device = keyfiles.device_key(self.cfg.layout.keys).public_key()
        return keyfiles.Keyring.load(Path(o.trusted_keys_dir) if o.trusted_keys_dir else None,
                                     device)

    def install(self, bundle: Path) -> dict[str, Any]:
        """Verify and stage `bundle`, then start its trial on the manager's thread. Returns the
        status once the trial has begun. BundleError (nothing changed) when refused."""
        if not self._installing.acquire(blocking=False):
            raise OtaError("another install is running; try again when it is done")
        try:
            if self.state["phase"] in ("staged", "trial"):
                raise OtaError(f"bundle {self.state['candidate']['bundle_id']} is in its "
                               "trial; wait for it, or `brain ota rollback`")
            want = Expectations(profile=self.cfg.profile, robot_id=self.robot_id,
                                daemon_version=__version__,
                                release_floor=int(self.state["release_floor"]),
                                max_bundle_bytes=self.cfg.ota.max_bundle_bytes)
            try:
                manifest, raw, path = self._offload(
                    stage_in_worker, str(bundle), self.keyring().pems(), str(self.paths.store),
                    str(self.paths.staging), want, self.kill_at, os.getpid())
                staged = StagedBundle(manifest, raw, Path(path))
            except BundleError as e:
                log.warning("bundle refused: %s", e)
                self._note("refused", e.reason, e.detail)
                with self._lock:
                    self.state.commit("refused", str(e), last_error={
                        "reason": e.reason, "detail": e.detail, "bundle_id": None})
                raise
            with self._lock:  # a rollback may have run meanwhile: decide on the state now
                if staged.bundle_id == self.state["active"]["bundle_id"]:
                    raise OtaError(f"{staged.bundle_id} is already the active bundle")
                self.state.commit("staged", staged.bundle_id, phase="staged",
                                  candidate=slot(staged.manifest),
                                  attempts_left=self.cfg.ota.attempts, last_error=None)
                self._note("staged", "", staged.bundle_id)
                self._abort.clear()
                self._commit_early.clear()
                self._trial = threading.Thread(target=self._run_trial,
                                               args=(staged.bundle_id,), name="ota-trial",
                                               daemon=True)
                self._trial.start()
            return self.status()
        finally:
            self._installing.release()

    @contextlib.contextmanager
    def transfer(self, expected_bytes: int | None = None) -> Iterator[None]:
        """One upload or download at a time, and only with room for it on the disk (the
        bundle, or ota.max_bundle_bytes when its size is unknown, plus a reserve)."""
        if not self._transferring.acquire(blocking=False):
            raise OtaError("another bundle upload or download is running; try again when it "
                           "is done")
        try:
            self.paths.downloads.mkdir(parents=True, exist_ok=True)
            need = (expected_bytes or self.cfg.ota.max_bundle_bytes) + DISK_RESERVE_BYTES
            free = shutil.disk_usage(self.paths.downloads).free
            if free < need:
                raise OtaError(f"not enough free disk for the bundle: {free >> 20} MiB free, "
                               f"{need >> 20} MiB needed; free some space (old exports, "
                               "episodes, `brain ota gc`)")
            yield
        finally:
            self._transferring.release()

    def download(self, url: str) -> Path:
        """Fetch a bundle over HTTP(S) into model/downloads/, resuming a partial download of
        the same URL (Range), refusing more than ota.max_bundle_bytes. Redirects are followed
        within the URL's own origin only, the whole fetch has a deadline, and every failure
        gets the same words (the details go to the log): a paired client cannot use the robot
        to probe which hosts and ports answer on its network."""
        import httpx

        name = hashlib.sha256(url.encode()).hexdigest()[:16]
        part = self.paths.downloads / f"{name}.part"
        done = self.paths.downloads / f"{name}.bundle"
        cap = self.cfg.ota.max_bundle_bytes
        failed = OtaError(f"could not download a bundle from {_safe_url(url)}; check the URL, "
                          "and install again to resume")
        with self.transfer():
            for old in self.paths.downloads.glob("*.part"):  # one partial download at most
                if old != part:
                    old.unlink(missing_ok=True)
            have = part.stat().st_size if part.exists() else 0
            deadline = time.monotonic() + DOWNLOAD_DEADLINE_S
            target = url
            try:
                with httpx.Client(timeout=30, follow_redirects=False) as client:
                    for _hop in range(MAX_REDIRECTS + 1):
                        headers = {"Range": f"bytes={have}-"} if have else {}
                        with client.stream("GET", target, headers=headers) as r:
                            if r.is_redirect:
                                nxt = urllib.parse.urljoin(target, r.headers.get("location", ""))
                                if _origin(nxt) != _origin(url):
                                    log.warning("download of %s: redirect to another origin "
                                                "refused", _safe_url(url))
                                    raise failed
                                target = nxt
                                continue
                            if r.status_code == 416 and have:  # already complete
                                break
                            if r.status_code == 206 and have:
                                self._append(r, part, have, cap, deadline)
                            elif r.status_code == 200:
                                self._append(r, part, 0, cap, deadline)
                            else:
                                log.warning("download of %s answered %d", _safe_url(target),
                                            r.status_code)
                                raise failed
                            break
                    else:
                        raise failed
            except httpx.HTTPError as e:
                log.warning("download of %s: %s", _safe_url(url), type(e).__name__)
                raise failed from None
            os.replace(part, done)
        return done

    @staticmethod
    def _append(r: Any, part: Path, have: int, cap: int, deadline: float) -> None:
        total = have
        with open(part, "ab" if have else "wb") as fh:
            for chunk in r.iter_bytes(64 << 10):  # on disk as it comes: a resume starts there
                total += len(chunk)
                if total > cap:
                    raise BundleError("too-large", f"the download passed {cap} bytes "
                                      "(ota.max_bundle_bytes)")
                if time.monotonic() > deadline:
                    raise OtaError(f"the download took longer than {DOWNLOAD_DEADLINE_S:g} s; "
                                   "install again to resume")
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())

    # -- the trial ---------------------------------------------------------------------------------
    def _run_trial(self, bundle_id: str) -> None:
        while True:
            st = self.state
            st.commit("trial", bundle_id, phase="trial",
                      attempts_left=max(0, st["attempts_left"] - 1))  # before loading: RAUC
            try:
                self._try(bundle_id)
            except TrialFailed as e:
                if e.transient and self.state["attempts_left"] > 0 and not self._abort.is_set():
                    log.warning("trial of %s: %s; trying again", bundle_id, e)
                    continue
                self._roll_back(bundle_id, e.reason, e.detail)
                return
            except Exception as e:  # a bug must not leave the candidate driving
                log.exception("trial of %s failed unexpectedly", bundle_id)
                self._roll_back(bundle_id, "trial-error", f"{type(e).__name__}: {e}")
                return
            self._commit(bundle_id)
            return

    def _try(self, bundle_id: str) -> None:
        manifest = self._manifest(bundle_id)
        try:
            policy = self._load_verified(bundle_id)
        except (ModelError, BundleError) as e:
            raise TrialFailed("load", str(e)) from None
        self._hook("loaded")
        safety = manifest["safety"]
        spec = policy.spec
        g = safety["golden"]
        inputs, outputs = read_golden(self.paths.bundle(bundle_id) / g["file"], g["count"],
                                      spec.input_width, spec.input_height)
        worst = 0.0
        for x, want in zip(inputs, outputs, strict=True):
            got = np.asarray(policy.backend.run(x), np.float32).reshape(-1)[:2]
            if not np.all(np.isfinite(got)):
                raise TrialFailed("golden", "the model produced NaN or infinity")
            worst = max(worst, float(np.max(np.abs(got - want))))
        if worst > g["tolerance"]:
            raise TrialFailed("golden", f"outputs differ from the golden vectors by {worst:.3g}"
                              f" (tolerance {g['tolerance']})")
        times = []
        for n in range(LATENCY_RUNS):
            t0 = time.perf_counter()
            policy.backend.run(inputs[n % len(inputs)])
            times.append(time.perf_counter() - t0)
        p99 = float(np.percentile(times, 99)) * 1e3
        if p99 > safety["latency_budget_ms"]:
            raise TrialFailed("latency", f"inference p99 {p99:.1f} ms over the budget "
                              f"{safety['latency_budget_ms']} ms", transient=True)
        previous = self.model.policy
        previous_limits = self.loop.limits
        limits = self._limits_for(bundle_id)
        errors0, bounds0 = self.runner.errors, self.runner.out_of_bounds
        missed0 = self.loop.stats.missed_ticks
        self.runner.bounds = limits
        self._activate(policy, bundle_id)
        self._note("swapped", "", bundle_id)
        self._hook("swapped")
        try:
            self._probation(errors0, bounds0, missed0)
        except TrialFailed:
            # back at once, between two ticks: the previous model is still loaded
            self.loop.limits = previous_limits
            self.model.swap(previous)
            raise
        finally:
            self.runner.bounds = None
            self._loaded.pop(bundle_id, None)

    def _probation(self, errors0: int, bounds0: int, missed0: int) -> None:
        end = time.monotonic() + self.cfg.ota.probation_s
        while time.monotonic() < end and not self._commit_early.is_set():
            if self._abort.wait(0.05):
                raise TrialFailed("aborted", "rolled back by request")
            self._hook("probation")
            if self.runner.errors > errors0:
                raise TrialFailed("inference-errors", f"{self.runner.errors - errors0} "
                                  "inference errors")
            if self.runner.out_of_bounds > bounds0:
                raise TrialFailed("outside-safety", f"{self.runner.out_of_bounds - bounds0} "
                                  "outputs outside the bundle's safety block")
            if self.loop.stats.missed_ticks > missed0 or not self.loop.on_time():
                raise TrialFailed("loop-late", "the control loop missed ticks during "
                                  "probation", transient=True)

    def _commit(self, bundle_id: str) -> None:
        st = self.state
        ref = st["candidate"]
        old = st["active"]
        floor = st["release_floor"]
        if ref["origin"] == "publisher":
            floor = max(floor, int(ref["release"]))
        st.commit("commit", bundle_id, phase="committed", active=ref, lkg=ref, previous=old,
                  candidate=None, attempts_left=0, release_floor=floor, last_error=None)
        self._note("committed", "", bundle_id)
        log.info("bundle %s committed", bundle_id)

    def _roll_back(self, bundle_id: str, reason: str, detail: str) -> None:
        st = self.state
        if self.model.policy is None or self.model.id == bundle_id:
            # the candidate is active (it never left): load the LKG again
            lkg = st["lkg"]["bundle_id"]
            try:
                self._activate(self._load_verified(lkg), lkg)
            except (ModelError, BundleError) as e:
                log.error("the last known good %s cannot be loaded: %s", lkg, e)
        self._fail_record(bundle_id, reason, detail)
        st.commit("rollback", f"{bundle_id}: {reason}", phase="rolled_back", candidate=None,
                  attempts_left=0, active=st["lkg"],
                  last_error={"reason": reason, "detail": detail, "bundle_id": bundle_id})
        self._note("rolled_back", reason, bundle_id)
        log.warning("bundle %s rolled back: %s: %s", bundle_id, reason, detail)

    def _fail_record(self, bundle_id: str | None, reason: str, detail: str) -> None:
        if not bundle_id:
            return
        write_failure(self.paths, bundle_id, {
            "bundle_id": bundle_id, "reason": reason, "detail": detail, "t": time.time(),
            "loop": self.loop.status(), "policy": {"errors": self.runner.errors,
                                                   "out_of_bounds": self.runner.out_of_bounds},
            "events": self.events[-20:]})

    def _note(self, event: str, reason: str, bundle_id: str) -> None:
        self.events = (self.events + [{"t": time.time(), "event": event, "reason": reason,
                                       "bundle_id": bundle_id}])[-50:]

    def wait_settled(self, timeout: float) -> dict[str, Any]:
        t = self._trial
        if t is not None:
            t.join(timeout)
        return self.status()

    # -- operator commands -------------------------------------------------------------------------
    def rollback(self) -> dict[str, Any]:
        """During a trial: abort it (LKG active again). Otherwise: make the previously committed
        bundle active again (local rollback is always allowed, below the floor too)."""
        if self.state["phase"] in ("staged", "trial"):
            self._abort.set()
            self.wait_settled(30)
            return self.status()
        with self._lock:
            st = self.state
            target = st.doc.get("previous")
            if not target:
                raise OtaError("nothing to roll back to: no earlier bundle was committed")
            try:
                policy = self._load_verified(target["bundle_id"])
            except (ModelError, BundleError) as e:
                raise OtaError(f"cannot roll back to {target['bundle_id']}: {e}") from None
            rolled = st["active"]
            st.commit("rollback", f"by request to {target['bundle_id']}", phase="rolled_back",
                      active=target, lkg=target, previous=None,
                      last_error={"reason": "requested", "bundle_id": rolled["bundle_id"],
                                  "detail": "rolled back by request"})
            self._activate(policy, target["bundle_id"])
            self._note("rolled_back", "requested", rolled["bundle_id"])
        return self.status()

    def commit_now(self) -> dict[str, Any]:
        """End a running trial's probation early and commit (the operator vouches for it)."""
        if self.state["phase"] != "trial":
            raise OtaError("no bundle is in its trial")
        self._commit_early.set()  # the probation ends at its next look, healthy so far
        self.wait_settled(30)
        return self.status()

    def gc(self) -> dict[str, Any]:
        """Remove stored bundles that are not active, LKG, previous, candidate or factory, and
        downloads. Refused while an install runs: the bundle being staged is in the store
        before the state names it, and its download may still be read."""
        if not self._installing.acquire(blocking=False):
            raise OtaError("an install is running; collect garbage when it is done")
        try:
            st = self.state
            keep = {ref["bundle_id"] for ref in (st["active"], st["lkg"],
                                                  st.doc.get("previous"), st["candidate"])
                    if ref}
            removed = []
            for d in self.paths.store.iterdir():
                if d.name in keep or d.name.startswith(FACTORY_PREFIX):
                    continue
                _remove_tree(d)
                removed.append(d.name)
            if self.paths.downloads.is_dir():
                shutil.rmtree(self.paths.downloads, ignore_errors=True)
            fsync_dir(self.paths.store)
            return {"removed": removed}
        finally:
            self._installing.release()

    # -- reporting ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        st = self.state.snapshot()
        return {"phase": st["phase"], "active": st["active"], "lkg": st["lkg"],
                "previous": st.get("previous"), "candidate": st["candidate"],
                "attempts_left": st["attempts_left"], "release_floor": st["release_floor"],
                "last_error": st["last_error"], "seq": st["seq"],
                "history": st["history"][-10:], "events": self.events[-10:]}

    def brief(self) -> dict[str, Any]:
        """A cheap summary for the live view (no copy of the history)."""
        doc = self.state.doc
        ids = {k: (doc.get(k) or {}).get("bundle_id") for k in ("active", "candidate")}
        err = doc.get("last_error")
        return {"phase": doc["phase"], **ids,
                "last_error": {"reason": err.get("reason"), "bundle_id": err.get("bundle_id")}
                if err else None}

    def list(self) -> dict[str, Any]:
        st = self.state
        roles: dict[str, list[str]] = {}
        for name in ("active", "lkg", "previous", "candidate"):
            ref = st.doc.get(name)
            if ref:
                roles.setdefault(ref["bundle_id"], []).append(name)
        out = []
        for d in sorted(self.paths.store.iterdir()):
            try:
                m = self._manifest(d.name)
            except (OSError, ValueError, BundleError):
                continue
            failed = self.paths.failed / f"{d.name}.json"
            out.append({"bundle_id": d.name, "name": m.get("name"), "version": m.get("version"),
                        "release": m.get("release"), "origin": m.get("origin"),
                        "created": m.get("created"), "roles": roles.get(d.name, []),
                        "size": sum(e["size"] for e in m.get("files", [])),
                        "failed": json.loads(failed.read_text()) if failed.exists() else None})
        return {"bundles": out}


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def _safe_url(url: str) -> str:
    """The URL without credentials or query (never log a token)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", ""))


def kill_point_from_env(env: Any, test_hooks: bool) -> str:
    return env.get(KILL_AT_VAR, "") if test_hooks else ""

