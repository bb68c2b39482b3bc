"""`brain cycle --sim`: the field plan (../shared/seeds/000_…) as one command on the simulator.

Nine phases, each a handful of the commands a user would type, run as subprocesses against a
real daemon, with every gate measured and written to `report.json` as it is decided (a run cut
short still leaves the phases it finished). `--short` is the same cycle with fewer episodes and
steps (what CI runs). The HTML report with plots is `brain.fieldplan_report`.

This module only orchestrates: torch runs in `brain train` and `brain-cloud`, never here.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brain.durable import atomic_write_json

NEW_TRACK = "chicane"  # the seed leaves the road here (docs/training.md)
OLD_TRACK = "oval"  # the seed's home track: must still be driven after learning
SKEW_LIMIT_MS = 5.0
BUNDLE_SIZE_LIMIT = 64 << 20
LATENESS_BUDGET_MS = 5.0


def learning_goal() -> Any:
    """The promotion gate's thresholds and rule (brain.train.settings.Gate): the field plan
    holds the learnt policy to the same, read from the same place (pydantic: imported when a
    phase needs it, not when the CLI starts)."""
    from brain.train.settings import Gate

    return Gate()


@dataclass
class Sizes:
    episodes: int
    seconds: float
    eval_seconds: float
    cloud_steps: int

    @classmethod
    def for_run(cls, short: bool) -> Sizes:
        return cls(6, 8.0, 15.0, 100) if short else cls(16, 15.0, 40.0, 600)


@dataclass
class Gate:
    name: str
    value: Any
    limit: Any
    passed: bool
    detail: str = ""


@dataclass
class Phase:
    number: int
    title: str
    gates: list[Gate] = field(default_factory=list)
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(g.passed for g in self.gates)


class CycleFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FieldPlan:
    def __init__(self, out: Path, *, short: bool, echo: Callable[[str], None] = print) -> None:
        self.out = out.resolve()
        self.short = short
        self.size = Sizes.for_run(short)
        self.echo = echo
        self.state = self.out / "state"
        self.keys = self.out / "keys"
        self.phases: list[Phase] = []
        self.daemon: subprocess.Popen[bytes] | None = None
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.env = {**os.environ, "BRAIN_STATE_DIR": str(self.state),
                    "BRAIN_LOG_LEVEL": "warning", "XDG_CONFIG_HOME": str(self.out / "config"),
                    "BRAIN_OTA_TRUSTED_KEYS_DIR": str(self.keys / "trusted"),
                    "BRAIN_PROFILES_SIM_TRACK": NEW_TRACK, "BRAIN_OTA_PROBATION_S": "3"}
        self.started = time.time()

    # -- plumbing ---------------------------------------------------------------------------------
    def brain(self, *args: str, timeout: float = 900, check: bool = True,
              show: Callable[[str], str | None] | None = None,
              **extra: str) -> subprocess.CompletedProcess[str]:
        return self._run([sys.executable, "-m", "brain", *args], timeout, check, extra, show)

    def cloud(self, *args: str, timeout: float = 1800, check: bool = True,
              show: Callable[[str], str | None] | None = None,
              **extra: str) -> subprocess.CompletedProcess[str]:
        return self._run([sys.executable, "-m", "brain_cloud", *args], timeout, check, extra,
                         show)

    def _run(self, argv: list[str], timeout: float, check: bool, extra: dict[str, str],
             show: Callable[[str], str | None] | None = None
             ) -> subprocess.CompletedProcess[str]:
        """Run a command to its end; what `show` makes of each output line (None: nothing) is
        echoed as it comes: the progress of a long phase."""
        proc = subprocess.Popen(argv, env={**self.env, **extra}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        lines: dict[str, list[str]] = {"out": [], "err": []}

        def pump(stream: Any, sink: list[str]) -> None:
            for line in stream:
                sink.append(line)
                shown = show(line) if show is not None else None
                if shown:
                    self.echo(f"      · {shown}")

        pumps = [threading.Thread(target=pump, args=(proc.stdout, lines["out"]), daemon=True),
                 threading.Thread(target=pump, args=(proc.stderr, lines["err"]), daemon=True)]
        for t in pumps:
            t.start()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        finally:
            for t in pumps:
                t.join(timeout=10)
        r = subprocess.CompletedProcess(argv, proc.returncode, "".join(lines["out"]),
                                        "".join(lines["err"]))
        with open(self.out / "commands.log", "a") as fh:
            fh.write(f"$ {' '.join(argv[2:])}\n-> {r.returncode}\n{r.stdout[-4000:]}"
                     f"{r.stderr[-4000:]}\n")
        if check and r.returncode != 0:
            raise CycleFailed(f"`{' '.join(argv[2:4])} …` exited {r.returncode}: "
                              f"{(r.stderr or r.stdout).strip()[-500:]}")
        return r

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.brain("status", "--json").stdout))

    def write_report(self) -> None:
        atomic_write_json(self.out / "report.json", self.report())

    def report(self) -> dict[str, Any]:
        return {"started": self.started, "seconds": round(time.time() - self.started, 1),
                "short": self.short, "sizes": self.size.__dict__,
                "passed": bool(self.phases) and all(p.passed for p in self.phases)
                and len(self.phases) == 9,
                "phases": [{"number": p.number, "title": p.title, "passed": p.passed,
                            "seconds": round(p.seconds, 1), "error": p.error,
                            "gates": [g.__dict__ for g in p.gates], "data": p.data}
                           for p in self.phases]}

    def phase(self, number: int, title: str, body: Callable[[Phase], None]) -> Phase:
        p = Phase(number, title)
        self.phases.append(p)
        self.echo(f"[{number}/9] {title}")
        t0 = time.monotonic()
        try:
            body(p)
        except (CycleFailed, subprocess.TimeoutExpired, OSError, ValueError, KeyError) as e:
            p.error = f"{type(e).__name__}: {e}"
        p.seconds = time.monotonic() - t0
        for g in p.gates:
            self.echo(f"      {'PASS' if g.passed else 'FAIL'}  {g.name}: {g.value} "
                      f"(limit {g.limit}){' — ' + g.detail if g.detail else ''}")
        if p.error:
            self.echo(f"      ERROR {p.error}")
        self.echo(f"      {p.seconds:.0f} s")
        self.write_report()
        return p

    # -- the cycle --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        steps: list[tuple[str, Callable[[Phase], None]]] = [
            ("health and hardware", self.p1_health),
            ("headless boot: API, mDNS, AUTONOMOUS armed", self.p2_boot),
            (f"{self.size.episodes} episodes on a track the seed does not know", self.p3_collect),
            ("on-device LoRA", self.p4_lora),
            ("cloud export", self.p5_export),
            ("cloud training (brain-cloud full-cycle --provider local)", self.p6_cloud),
            ("bundle assembly and signature", self.p7_bundle),
            ("OTA to the running daemon", self.p8_ota),
            ("post-deploy validation", self.p9_validate),
        ]
        try:
            for n, (title, body) in enumerate(steps, start=1):
                if not self.phase(n, title, body).passed and n in (2, 3, 5, 6, 7):
                    self.echo("      a later phase needs this one: stopping")
                    break
        finally:
            self.stop_daemon()
            self.write_report()
        return self.report()

    # -- phases -----------------------------------------------------------------------------------
    def p1_health(self, p: Phase) -> None:
        h = json.loads(self.brain("health", "--quick", "--json", check=False).stdout)
        failed = [c["name"] for c in h["checks"] if c["status"] == "fail"]
        p.gates.append(Gate("health", "ok" if h["ok"] else f"failed: {failed}", "ok",
                            bool(h["ok"])))
        log = self.out / "validate-hardware.json"
        self.brain("validate-hardware", "--profile", "sim", "--log-json", str(log),
                   check=False)
        vh = json.loads(log.read_text())
        gate = {g["name"]: g for g in vh["gate"]}
        for name in ("camera", "pca9685"):
            p.gates.append(Gate(f"{name} detected", gate[name]["detail"], "detected",
                                gate[name]["status"] == "ok"))
        skew = gate["timestamp_skew"]
        p.gates.append(Gate("timestamp skew", skew["detail"].split(" (")[0], "≤ 5 ms",
                            skew["status"] == "ok"))

    def p2_boot(self, p: Phase) -> None:
        self.keys.mkdir(parents=True, exist_ok=True)
        self.brain("bundle", "keygen", "--out", str(self.keys), "--name", "publisher")
        (self.keys / "trusted").mkdir(exist_ok=True)
        shutil.copy(self.keys / "publisher.pub", self.keys / "trusted")
        env = {**self.env, "CONTINUON_HEADLESS": "1", "BRAIN_API_ENABLED": "1",
               "BRAIN_API_HOST": "127.0.0.1", "BRAIN_API_PORT": str(self.port),
               "BRAIN_API_TLS": "1", "BRAIN_API_MDNS": "1", "BRAIN_ROBOT_NAME": "fieldplan-car"}
        self.state.mkdir(parents=True, exist_ok=True)
        log = open(self.out / "daemon.log", "wb")
        t0 = time.monotonic()
        self.daemon = subprocess.Popen([sys.executable, "-m", "brain", "run", "--sim"],
                                       env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        up = self._wait(lambda: self._api_up(), 60)
        p.gates.append(Gate("API up", f"{time.monotonic() - t0:.1f} s" if up else "down",
                            "≤ 60 s", up))
        ident = self.status()
        found = json.loads(self.brain("discover", "--json", "--timeout", "4",
                                      check=False).stdout or "[]")
        ours = [r for r in found if r.get("name") == "fieldplan-car"]
        p.gates.append(Gate("discovered over mDNS", f"{len(ours)} of {len(found)} robots",
                            "found", bool(ours)))
        p.data["fingerprint"] = ours[0].get("fp") if ours else None
        mode = ident.get("mode")
        p.gates.append(Gate("AUTONOMOUS armed, idle", mode, "autonomous_armed",
                            mode == "autonomous_armed"))
        p.data["model"] = ident.get("model")

    def _api_up(self) -> bool:
        import ssl
        import urllib.request

        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/health", context=ctx,
                                        timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def _wait(self, fn: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.daemon is not None and self.daemon.poll() is not None:
                raise CycleFailed(f"the daemon exited {self.daemon.returncode}; see "
                                  f"{self.out / 'daemon.log'}")
            if fn():
                return True
            time.sleep(0.3)
        return False

    def p3_collect(self, p: Phase) -> None:
        before = self.loop_snapshot()
        r = self.brain("collect", "--teacher", "--daemon", "--episodes",
                       str(self.size.episodes), "--seconds", str(self.size.seconds),
                       timeout=3600,
                       show=lambda line: line.rstrip() if line.startswith("episode ") else None)
        p.data["collect"] = r.stdout.strip().splitlines()[-1:]
        reports = json.loads(self.brain("episodes", "validate", "--json").stdout)
        ok = [e for e in reports if e.get("status") == "ok"]
        p.gates.append(Gate("episodes valid", f"{len(ok)} of {len(reports)}",
                            f"{self.size.episodes} ok", len(ok) >= self.size.episodes))
        skews = [float(e["skew_p99_ms"]) for e in reports]
        worst = max(skews) if skews else float("nan")
        p.gates.append(Gate("frame-to-step skew p99", f"{worst:.2f} ms", "≤ 5 ms",
                            worst <= SKEW_LIMIT_MS))
        p.data["lateness"] = self._lateness(before)

    def loop_snapshot(self) -> dict[str, Any]:
        """The daemon's status with its lateness histogram (counts since it started)."""
        return dict(json.loads(self.brain("status", "--json", "--histogram").stdout))

    def _lateness(self, before: dict[str, Any]) -> dict[str, Any]:
        """This phase's own lateness: the histogram now minus the one at its start."""
        from brain.control.histogram import RESOLUTION_S  # numpy: not at CLI start-up
        after = self.loop_snapshot()
        b0, b1 = before["histogram"]["lateness_us"], after["histogram"]["lateness_us"]
        bins = {k: b1[k] - b0.get(k, 0) for k in b1 if b1[k] - b0.get(k, 0) > 0}
        edges = sorted(bins, key=lambda k: float(k.lstrip(">=")))
        total = sum(bins.values())

        def upper_ms(k: str) -> float:  # a bin's upper edge: "p99 ≤ this"
            return round((float(k.lstrip(">=")) + RESOLUTION_S * 1e6) / 1e3, 3)

        p99 = None
        seen = 0
        for k in edges:
            seen += bins[k]
            if seen >= 0.99 * total:
                p99 = upper_ms(k)
                break
        return {"ticks": total, "bins_us": {k: bins[k] for k in edges}, "p99_ms": p99,
                "max_ms": upper_ms(edges[-1]) if edges else None,
                "missed_ticks": after.get("missed_ticks", 0) - before.get("missed_ticks", 0)}

    def p4_lora(self, p: Phase) -> None:
        before = self.loop_snapshot()
        config = Path(__file__).resolve().parent.parent / "etc" / "train" / "pi5-donkey.json"
        r = self.brain("train", "--config", str(config), "--json", "--no-gate",
                       "--run-id", "fieldplan", timeout=3600, show=_every_100th_step)
        events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
        steps = [e for e in events if "loss" in e and "step" in e]
        p.data["loss"] = [[e["step"], e["loss"]] for e in steps]
        if not steps:
            raise CycleFailed("brain train reported no loss")
        first, last = float(steps[0]["loss"]), float(steps[-1]["loss"])
        p.gates.append(Gate("loss converges", f"{first} → {last}", "last < first / 2",
                            last < first / 2))
        run = json.loads((self.state / "train" / "runs" / "fieldplan" / "run.json").read_text())
        worst = run.get("worst_resource_level") or "NORMAL"
        p.gates.append(Gate("resource monitor", f"worst {worst}", "never CRITICAL/EMERGENCY",
                            worst not in ("CRITICAL", "EMERGENCY")))
        ckpts = sorted((self.state / "train" / "runs" / "fieldplan" / "checkpoints")
                       .glob("*.pt"))
        p.gates.append(Gate("checkpoints saved", len(ckpts), "≥ 1", bool(ckpts)))
        cand = self.state / "model" / "adapters" / "candidate" / "lora_adapters.pt"
        p.gates.append(Gate("candidate adapters", cand.name if cand.exists() else "missing",
                            "written", cand.exists()))
        p.data["lateness"] = self._lateness(before)

    def p5_export(self, p: Phase) -> None:
        out = self.out / "export"
        self.brain("episodes", "export", "--out", str(out),
                   CONTINUON_EXPORT_ORIGIN="fieldplan-sim")
        manifest = json.loads((out / "export_manifest.json").read_text())
        p.gates.append(Gate("origin stamped", manifest.get("origin"), "fieldplan-sim",
                            manifest.get("origin") == "fieldplan-sim"))
        bad = [v for v in manifest.get("validation", []) if v.get("status") != "ok"]
        p.gates.append(Gate("validation", f"{len(manifest['validation']) - len(bad)} ok, "
                            f"{len(bad)} not", "all ok", not bad))
        r = self.cloud("ingest", str(out), "--json")
        p.gates.append(Gate("manifest verified by the companion",
                            f"{json.loads(r.stdout)['files_verified']} files", "all", True))
        p.data["counts"] = manifest["counts"]

    def p6_cloud(self, p: Phase) -> None:
        before = self.loop_snapshot()
        config = self.out / "cloud.json"
        config.write_text(json.dumps({"max_steps": self.size.cloud_steps, "batch": 32}))
        self.cloud("full-cycle", str(self.out / "export"), "--provider", "local", "--runs",
                   str(self.out / "cloud"), "--config", str(config), "--adapters",
                   str(self.state / "model" / "adapters" / "candidate"), "--key",
                   str(self.keys / "publisher.key"), "--json", timeout=3600,
                   show=lambda line: line.rstrip() if "] start" in line or "] FAILED" in line
                   else None)
        summary = json.loads(next((self.out / "cloud").glob("*/run-summary.json"))
                             .read_text())
        p.data["summary"] = {k: summary.get(k) for k in ("run_id", "status", "provider",
                                                          "terminated", "timings_s")}
        run = json.loads((Path(summary["paths"]["artifacts"]) / "run" / "run.json")
                         .read_text())
        p.data["loss"] = [[h["step"], h["loss"]] for h in run.get("history", [])]
        bundle = Path(summary["paths"]["bundle"])
        self.bundle = bundle
        evals = self._eval(str(bundle), [NEW_TRACK])
        cte = evals[NEW_TRACK]["mean_abs_cte"]
        goal = learning_goal()
        p.gates.append(Gate(f"eval on {NEW_TRACK}: mean |cte|", f"{cte:.4f} m",
                            f"≤ {goal.target_max_mean_cte} m", cte <= goal.target_max_mean_cte))
        p.gates.append(Gate("machine terminated, summary written", summary["terminated"],
                            True, summary["terminated"] is True))
        size = bundle.stat().st_size
        p.gates.append(Gate("bundle size", f"{size / 1e6:.2f} MB",
                            f"≤ {BUNDLE_SIZE_LIMIT >> 20} MiB", size <= BUNDLE_SIZE_LIMIT))
        p.data["lateness"] = self._lateness(before)

    def _eval(self, model: str, tracks: list[str]) -> dict[str, dict[str, Any]]:
        args = ["eval", "--model", model, "--seconds", str(self.size.eval_seconds), "--json",
                "--keys", str(self.keys / "trusted")]
        for t in tracks:
            args += ["--track", t]
        r = self.brain(*args, timeout=1800)
        out = {}
        for line in r.stdout.splitlines():
            if line.startswith("{"):
                doc = json.loads(line)
                out[doc["track"]] = doc
        return out

    def p7_bundle(self, p: Phase) -> None:
        r = self.brain("bundle", "verify", "--keys", str(self.keys / "trusted"),
                       str(self.bundle), "--json", check=False)
        doc = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
        ok = r.returncode == 0
        p.gates.append(Gate("signature and checksums", "verified" if ok else r.stderr.strip(),
                            "verified", ok))
        files = (doc.get("manifest") or {}).get("files", [])
        p.data["files"] = [{"path": f["path"], "role": f["role"], "size": f["size"]}
                           for f in files]
        p.gates.append(Gate("files in the manifest", len(files), "≥ 3", len(files) >= 3))

    def p8_ota(self, p: Phase) -> None:
        from brain.api.tls import fingerprint_pem

        before = self.loop_snapshot()
        ota0 = json.loads(self.brain("ota", "status", "--json").stdout)
        fp = fingerprint_pem((self.state / "api" / "tls-cert.pem").read_bytes())
        code = json.loads(self.brain("pair", "--json").stdout)["code"]
        self.cloud("pair", "fieldplan-car", "--code", code, "--url", self.url,
                   "--fingerprint", fp)
        r = self.cloud("push", str(self.bundle), "--robot", "fieldplan-car", "--url",
                       self.url, "--json", check=False)
        push = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
        p.data["timeline"] = push.get("states", [])
        p.gates.append(Gate("trial → commit", push.get("final", r.stderr.strip()[-200:]),
                            "committed", push.get("final") == "committed"))
        h = json.loads(self.brain("health", "--quick", "--json", check=False).stdout)
        p.gates.append(Gate("health after the swap", "ok" if h["ok"] else "failed", "ok",
                            bool(h["ok"])))
        lat = self._lateness(before)
        p.data["lateness"] = lat
        p.gates.append(Gate("loop lateness p99 during the OTA", f"{lat['p99_ms']} ms",
                            f"≤ {LATENESS_BUDGET_MS} ms, 0 missed",
                            (lat["p99_ms"] or 0) <= LATENESS_BUDGET_MS
                            and lat["missed_ticks"] == 0))
        ota = json.loads(self.brain("ota", "status", "--json").stdout)
        prev = (ota.get("previous") or {}).get("bundle_id")
        p.gates.append(Gate("fallback preserved", f"previous = {prev}",
                            ota0["active"]["bundle_id"],
                            prev == ota0["active"]["bundle_id"]))

    def p9_validate(self, p: Phase) -> None:
        before_loop = self.loop_snapshot()
        seed = str(Path(__file__).resolve().parent / "models" / "seed")
        before = self._eval(seed, [NEW_TRACK, OLD_TRACK])
        after = self._eval("active", [NEW_TRACK, OLD_TRACK])
        p.data["eval"] = {"before": before, "after": after}
        new_b, new_a = (before[NEW_TRACK]["mean_abs_cte"], after[NEW_TRACK]["mean_abs_cte"])
        old_b, old_a = (before[OLD_TRACK]["mean_abs_cte"], after[OLD_TRACK]["mean_abs_cte"])
        goal = learning_goal()
        p.gates.append(Gate(f"{NEW_TRACK} (new): mean |cte|", f"{new_b:.4f} → {new_a:.4f} m",
                            f"≤ {goal.target_max_mean_cte} m",
                            new_a <= goal.target_max_mean_cte))
        p.gates.append(Gate(f"{OLD_TRACK} (kept): mean |cte|", f"{old_b:.4f} → {old_a:.4f} m",
                            f"≤ {goal.kept_limit(old_b):.4f} m ({goal.keep_max_ratio}× before)",
                            old_a <= goal.kept_limit(old_b)))
        # A short teleop and autonomous run, recorded.
        self.brain("mode", "manual")
        self.brain("episodes", "start")
        for _ in range(10):
            self.brain("drive", "--steering", "0.0", "--throttle", "0.3")
            time.sleep(0.2)
        self.brain("mode", "arm")
        self.brain("mode", "drive")
        time.sleep(3.0)
        self.brain("episodes", "stop")
        self.brain("mode", "idle")
        reports = json.loads(self.brain("episodes", "validate", "--json").stdout)
        last = reports[-1]
        skew = float(last["skew_p99_ms"])
        p.gates.append(Gate("teleop + autonomous episode", last.get("status"), "ok",
                            last.get("status") == "ok"))
        p.gates.append(Gate("its frame-to-step skew p99", f"{skew:.2f} ms", "≤ 5 ms",
                            skew <= SKEW_LIMIT_MS))
        # A deliberately bad bundle: its safety block allows less throttle than the policy
        # gives, so the trial sees outputs outside it and rolls back.
        active = json.loads(self.brain("ota", "status", "--json").stdout)["active"]["bundle_id"]
        bad = self.out / "bad.bundle"
        self.brain("bundle", "build", str(self.out / "cloud" / self._cloud_run() / "model"),
                   "--key", str(self.keys / "publisher.key"), "--version", "9.9.9",
                   "--release", str(int(time.time()) + 1), "--name", "deliberately-bad",
                   "--max-throttle", "0.01", "--out", str(bad))
        r = self.cloud("push", str(bad), "--robot", "fieldplan-car", "--url", self.url,
                       "--json", check=False)
        push = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
        p.data["bad_timeline"] = push.get("states", [])
        st = json.loads(self.brain("ota", "status", "--json").stdout)
        p.gates.append(Gate("bad bundle rolled back", push.get("final"), "rolled_back",
                            push.get("final") == "rolled_back"
                            and st["active"]["bundle_id"] == active))
        failed = list((self.state / "model" / "failed").glob("*.json"))
        p.gates.append(Gate("its logs kept for triage", [f.name for f in failed], "kept",
                            bool(failed)))
        p.data["lateness"] = self._lateness(before_loop)

    def _cloud_run(self) -> str:
        return next((self.out / "cloud").glob("*/run-summary.json")).parent.name

    def stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
        self.daemon = None


def _every_100th_step(line: str) -> str | None:
    """`brain train --json`'s step events, one in every hundred steps, as a line of text."""
    try:
        e = json.loads(line)
    except ValueError:
        return None
    if not isinstance(e, dict) or "event" in e or "loss" not in e or e.get("step", 1) % 100:
        return None
    return (f"step {e['step']}/{e.get('max_steps')}  loss {e['loss']:.5f}  "
            f"{e.get('steps_per_s', 0):.0f} steps/s")


# -- the command ----------------------------------------------------------------------------------

def register(subparsers: Any, make_client: Callable[[], Any]) -> None:
    p = subparsers.add_parser("cycle", help="the whole field plan on the simulator, with its "
                                            "report (docs/fieldplan.md)")
    p.add_argument("--sim", action="store_true", required=True,
                   help="on the simulator (the only place it runs from one command)")
    p.add_argument("--out", type=Path, help="run directory (default: out/cycle-<time>)")
    p.add_argument("--short", action="store_true",
                   help="fewer episodes and steps (what CI runs)")
    p.set_defaults(func=cmd_cycle)


def cmd_cycle(args: Any) -> int:
    out = args.out or Path("out") / time.strftime("cycle-%Y%m%dT%H%M%S")
    if out.exists() and any(out.iterdir()):
        print(f"brain cycle: {out} is not empty; choose a new --out", file=sys.stderr)
        return 2
    plan = FieldPlan(out, short=args.short)
    print(f"field plan on the simulator -> {plan.out}", flush=True)
    report = plan.run()
    try:
        from brain.fieldplan_report import write_html

        html = write_html(plan.out, report)
        print(f"report: {plan.out / 'report.json'}, {html}")
    except ModuleNotFoundError as e:
        print(f"report: {plan.out / 'report.json'} (no HTML: {e.name} is not installed; "
              "pip install matplotlib)")
    failed = [f"{p['number']}" for p in report["phases"] if not p["passed"]]
    print(f"{'PASSED' if report['passed'] else 'FAILED'} in {report['seconds']:.0f} s"
          + (f"; phases not passed: {', '.join(failed)}" if failed else ""))
    return 0 if report["passed"] else 1
