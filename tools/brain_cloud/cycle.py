"""`brain-cloud full-cycle`: one run from a robot export to a signed bundle (and the robot).

Seed 002's order, step by step, so that a run can be audited afterwards:

1. compute the run id and every path up front (run directory, remote work directory, log);
2. prepare: verify the export against its manifest, validate the training configuration,
   estimate the cost and refuse a run over the budget;
3. provision (providers in the failover order; transient errors retried with backoff)
   -> wait until the machine takes commands -> upload (sha256 checked on the machine, which
   writes `upload.ok`) -> train there (detached from the connection, its log polled and copied
   here live) -> download the artifacts (one tar stream, sha256 checked) -> verify them;
4. **always terminate** the machine: in a `finally`, also when this process gets SIGINT or
   SIGTERM (turned into an exception so the `finally` runs);
5. **always write `run-summary.json`**, failed or not, saying what failed;
6. then export (ONNX + golden vectors), bundle and sign, and push when asked.

`BRAIN_CLOUD_INJECT_FAULT=<stage>` (stages: provision, upload, train, download, verify) makes
that stage fail, for the tests that prove steps 4 and 5; nothing else reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shlex
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from brain.durable import atomic_write_json
from brain.rlds.reader import ExportReadError, verify_export
from brain_cloud.providers import Machine, Provider, ProviderError
from brain_cloud.train import FINAL_WEIGHTS, REPLAY, CloudTrainError, load_settings
from brain_cloud.transport import TransportError, download, upload

SUMMARY = "run-summary.json"
STAGES = ("prepare", "provision", "wait", "upload", "train", "download", "verify", "terminate",
          "export", "bundle", "push")
FAULT_ENV = "BRAIN_CLOUD_INJECT_FAULT"
T = TypeVar("T")


class CycleError(RuntimeError):
    """A stage failed; the message says which and why."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached the orchestrator (BaseException: nothing swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class CycleOptions:
    export: Path
    runs_root: Path
    providers: list[Provider]
    base: Path
    train_config: Path | None = None
    adapters: Path | None = None
    nproc: int = 1
    key: Path | None = None
    version: str = ""
    release: int = 0
    budget_usd: float | None = None
    assumed_steps_per_s: float = 20.0
    overhead_minutes: float = 10.0
    retries: int = 3
    backoff_s: float = 1.0
    boot_timeout_s: float = 600.0
    train_timeout_s: float = 6 * 3600.0
    poll_s: float = 1.0
    push: Callable[[Path, Callable[[str], None]], dict[str, Any]] | None = None
    run_id: str = ""


@dataclass
class RunState:
    run_id: str
    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


class Cycle:
    def __init__(self, opts: CycleOptions, echo: Callable[[str], None] = print) -> None:
        self.o = opts
        self.echo = echo
        self.run_id = opts.run_id or new_run_id()
        self.run_dir = Path(opts.runs_root) / self.run_id
        self.log_path = self.run_dir / "run.log"
        self.machine: Machine | None = None
        self.provider: Provider | None = None
        self._t0 = time.time()
        self._machine_since: float | None = None
        self.summary: dict[str, Any] = {}

    # -- logging and the summary -------------------------------------------------------------------
    def log(self, message: str) -> None:
        line = f"{datetime.now(UTC).strftime('%H:%M:%S')} {message}"
        with open(self.log_path, "a") as fh:
            fh.write(line + "\n")
        self.echo(line)

    def _write_summary(self) -> None:
        atomic_write_json(self.run_dir / SUMMARY, self.summary)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        self.summary["stage"] = name
        self.log(f"[{name}] start")
        try:
            if os.environ.get(FAULT_ENV) == name:
                raise CycleError(f"{name}: injected fault ({FAULT_ENV})")
            yield
        except BaseException as e:
            self.summary["timings_s"][name] = round(time.monotonic() - t0, 3)
            self.summary["failed_stage"] = name
            self.summary["error"] = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            self.log(f"[{name}] FAILED: {self.summary['error']}")
            raise
        self.summary["timings_s"][name] = round(time.monotonic() - t0, 3)
        self.log(f"[{name}] done in {self.summary['timings_s'][name]:.1f} s")

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        delay = self.o.backoff_s
        for attempt in range(1, self.o.retries + 1):
            try:
                return fn()
            except (TransportError, ProviderError) as e:
                if not getattr(e, "transient", False) or attempt == self.o.retries:
                    raise
                self.summary["retries"].append({"what": what, "attempt": attempt,
                                                "error": str(e)})
                self.log(f"{what}: {e}; retry {attempt + 1}/{self.o.retries} in {delay:.0f} s")
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    # -- the run ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """The whole cycle; returns the summary (also on disk). Raises CycleError or Interrupted
        after the machine is terminated and the summary written."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.summary = {
            "run_id": self.run_id, "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "orchestrator_host": socket.gethostname(), "status": "running",
            "paths": {"run_dir": str(self.run_dir), "log": str(self.log_path),
                      "export": str(self.o.export), "base": str(self.o.base),
                      "config": str(self.o.train_config) if self.o.train_config else None,
                      "adapters": str(self.o.adapters) if self.o.adapters else None,
                      "remote_workdir": None, "artifacts": str(self.run_dir / "artifacts"),
                      "model": str(self.run_dir / "model"), "bundle": None},
            "providers_tried": [], "provider": None, "machine_id": None,
            "connection_mode": None, "remote_user": None, "remote_host": None,
            "samples": None, "base_model": None, "upload": None, "download": None,
            "exit_codes": {}, "training_success": False, "terminated": None,
            "cost_usd": {"estimate": None, "actual": None, "budget": self.o.budget_usd},
            "timings_s": {}, "retries": [], "failed_stage": None, "error": None,
        }
        self._write_summary()
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._remote_part()
            self._local_part()
            self.summary["status"] = "succeeded"
        except Interrupted as e:
            self.summary["status"] = "interrupted"
            self.summary["error"] = self.summary.get("error") or f"Interrupted: {e}"
            raise
        except Exception as e:
            self.summary["status"] = "failed"
            if not self.summary.get("error"):
                self.summary["error"] = f"{type(e).__name__}: {e}"
            raise CycleError(f"{self.summary.get('failed_stage') or 'run'} failed: {e}") \
                from None
        finally:
            self.summary["timings_s"]["total"] = round(time.time() - self._t0, 3)
            self._write_summary()
            for s, h in old.items():
                signal.signal(s, h)
            self.log(f"run {self.run_id} {self.summary['status']}; summary in "
                     f"{self.run_dir / SUMMARY}")
        return self.summary

    def _on_signal(self, signum: int, _frame: Any) -> None:
        raise Interrupted(signum)

    def _remote_part(self) -> None:
        """Prepare, provision, upload, train, download, verify; always terminate."""
        try:
            with self.stage("prepare"):
                settings = self._prepare()
            self._provision()
            assert self.machine is not None and self.provider is not None
            machine, provider = self.machine, self.provider
            with self.stage("wait"):
                self._retry("waiting for the machine",
                            lambda: provider.wait_ready(machine, self.o.boot_timeout_s,
                                                        self.log))
            ssh = machine.ssh
            self.summary.update(connection_mode=machine.connection_mode or provider.name,
                                remote_user=ssh.user if ssh else os.environ.get("USER", ""),
                                remote_host=f"{ssh.host}:{ssh.port}" if ssh else "localhost")
            shell = provider.shell(machine)
            with self.stage("upload"):
                self.summary["upload"] = self._retry("upload", lambda: upload(
                    shell, self._upload_sources(), machine.workdir, self.log))
            with self.stage("train"):
                self._train(shell, machine, provider, settings)
            with self.stage("download"):
                self.summary["download"] = self._retry("download", lambda: download(
                    shell, machine.workdir, ["run/run.json", f"run/{FINAL_WEIGHTS}",
                                             f"run/{REPLAY}", "train.log"],
                    self.run_dir / "artifacts",
                    self.log))
            with self.stage("verify"):
                self._verify()
        finally:
            self._terminate()

    def _prepare(self) -> Any:
        try:
            manifest = verify_export(self.o.export)
        except ExportReadError as e:
            raise CycleError(f"the export is not usable: {e}") from None
        try:
            settings = load_settings(self.o.train_config)
        except CloudTrainError as e:
            raise CycleError(str(e)) from None
        from brain.control.model import load_spec

        self.summary["base_model"] = load_spec(self.o.base).id
        self.summary["samples"] = {"episodes": manifest["counts"]["episodes"],
                                   "steps": manifest["counts"]["steps"],
                                   "frames": manifest["counts"]["frames"],
                                   "export_origin": manifest.get("origin")}
        self.log(f"export {self.o.export}: {manifest['counts']['episodes']} episodes, "
                 f"{manifest['counts']['steps']} steps, verified against its manifest")
        hours = (settings.max_steps / self.o.assumed_steps_per_s / 3600.0
                 + self.o.overhead_minutes / 60.0)
        estimates = {p.name: p.estimate_usd(hours) for p in self.o.providers}
        first = estimates[self.o.providers[0].name]
        self.summary["cost_usd"].update(estimate=first, estimates=estimates,
                                        estimated_hours=round(hours, 3))
        if self.o.budget_usd is not None and first > self.o.budget_usd:
            raise CycleError(f"the estimate ${first:.2f} ({hours:.2f} h on "
                             f"{self.o.providers[0].name}) is over the budget "
                             f"${self.o.budget_usd:.2f}; raise --budget-usd or train fewer "
                             "steps")
        self.log(f"estimated {hours:.2f} h, ${first:.2f} on {self.o.providers[0].name}"
                 + (f" (budget ${self.o.budget_usd:.2f})" if self.o.budget_usd is not None
                    else ""))
        return settings

    def _provision(self) -> None:
        with self.stage("provision"):
            errors = []
            for provider in self.o.providers:
                self.summary["providers_tried"].append(provider.name)
                try:
                    machine = self._retry(f"provisioning on {provider.name}",
                                          partial(provider.provision, self.run_id, self.log))
                except (ProviderError, TransportError) as e:
                    errors.append(f"{provider.name}: {e}")
                    self.log(f"provider {provider.name} failed: {e}; "
                             + ("trying the next" if provider is not self.o.providers[-1]
                                else "no provider left"))
                    continue
                self.machine, self.provider = machine, provider
                self._machine_since = time.time()
                self.summary.update(provider=provider.name, machine_id=machine.id,
                                    machine_details=machine.details)
                self.summary["paths"]["remote_workdir"] = machine.workdir
                self._write_summary()  # the machine id is on disk before anything else
                return
            raise CycleError("no provider could provision a machine: " + "; ".join(errors))

    def _upload_sources(self) -> dict[str, Path]:
        sources = {"data/export": Path(self.o.export), "data/base": Path(self.o.base)}
        if self.o.train_config:
            sources["data/config.json"] = Path(self.o.train_config)
        if self.o.adapters:
            sources["data/adapters"] = Path(self.o.adapters)
        return sources

    def _train(self, shell: Any, machine: Machine, provider: Provider, settings: Any) -> None:
        py = provider.python(machine)
        args = ["train", "--export", "data/export", "--run-dir", "run", "--json",
                "--base", "data/base"]
        if self.o.train_config:
            args += ["--config", "data/config.json"]
        if self.o.adapters:
            args += ["--adapters", "data/adapters"]
        if self.o.nproc > 1:
            argv = [py, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={self.o.nproc}", "-m", "brain_cloud", *args]
        else:
            argv = [py, "-m", "brain_cloud", *args]
        cmd = " ".join(shlex.quote(a) for a in argv)
        self.summary["remote_command"] = cmd
        w = shlex.quote(machine.workdir)
        # Its own session and process group, detached from the connection. The group id is
        # the wrapper's own $$ (setsid forks when the caller leads a group, as in an
        # interactive PTY session, so $! could name a process that is already gone).
        inner = shlex.quote(f"echo $$ > train.pid; {cmd} > train.log 2>&1; echo $? > train.rc")
        shell.check(f"cd {w} && rm -f train.rc train.log train.pid && (setsid sh -c {inner} "
                    f"</dev/null >/dev/null 2>&1 &) && for i in $(seq 1 100); do "
                    f"[ -s train.pid ] && exit 0; sleep 0.1; done; echo no train.pid; exit 1",
                    timeout=60, what="starting the training")
        self.log(f"training started on {machine.id}: {cmd}")
        offset, rc, deadline = 0, None, time.monotonic() + self.o.train_timeout_s
        while rc is None:
            if time.monotonic() > deadline:
                raise CycleError(f"training did not finish in {self.o.train_timeout_s:.0f} s")
            time.sleep(self.o.poll_s)
            r = shell.run(f"cd {w}; printf 'RC:%s\\n' \"$(cat train.rc 2>/dev/null)\"; "
                          f"tail -c +{offset + 1} train.log 2>/dev/null", timeout=60)
            if r.rc == 255:
                self.log("lost the connection while training; the run goes on, reconnecting")
                continue
            head, _, new = r.out.partition(b"\n")
            offset += len(new)
            for line in new.decode(errors="replace").splitlines():
                self._training_line(line)
            code = head.decode().removeprefix("RC:").strip()
            rc = int(code) if code.isdigit() else None
        self.summary["exit_codes"]["train"] = rc
        if rc != 0:
            raise CycleError(f"training exited with {rc}; its log is in {self.log_path}")

    def _training_line(self, line: str) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            self.log(f"  remote: {line}")
            return
        if event.get("event") == "step":
            self.summary["last_step"] = event
            self.log(f"  step {event['step']}/{event['max_steps']} loss {event['loss']:.5f}"
                     + (f" val {event['val_loss']:.5f}" if event.get("val_loss") is not None
                        else "") + f" ({event['steps_per_s']:.1f} steps/s)")
        else:
            self.log(f"  {json.dumps(event)}")

    def _verify(self) -> None:
        art = self.run_dir / "artifacts"
        record = json.loads((art / "run" / "run.json").read_text())
        if record.get("status") != "completed":
            raise CycleError(f"the training run is {record.get('status')!r}: "
                             f"{record.get('detail')}")
        weights = art / "run" / FINAL_WEIGHTS
        from safetensors.torch import load_file

        from brain.train.model import PolicyNet

        net = PolicyNet()
        try:
            net.load_state_dict(load_file(str(weights)))
        except Exception as e:
            raise CycleError(f"{weights}: not the policy's weights: {e}") from None
        self.summary["training_success"] = True
        self.summary["training"] = {"steps": record.get("step"), "history": record.get(
            "history", [])[-5:], "weights_sha256": hashlib.sha256(weights.read_bytes())
            .hexdigest(), "world": record.get("world")}
        self.log(f"artifacts verified: {record.get('step')} steps, weights load into the policy")

    def _terminate(self) -> None:
        # A second signal must not cut the termination short: note it and carry on.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda n, _f: self.log(
                f"{signal.Signals(n).name} while terminating: finishing that first"))
        provider = self.provider
        if provider is None:
            self.summary["terminated"] = True  # nothing was provisioned
            return
        t0 = time.monotonic()
        self.summary["timings_s"].setdefault("terminate", 0.0)
        try:
            self.summary["terminated"] = bool(self._retry(
                "terminating", lambda: provider.terminate(self.machine, self.log)))
        except BaseException as e:  # the summary says so; the original error stays the error
            self.summary["terminated"] = False
            self.summary["terminate_error"] = str(e)
            self.log(f"TERMINATION FAILED for {self.summary['machine_id']}: {e}; "
                     "terminate it by hand")
        finally:
            self.summary["timings_s"]["terminate"] = round(time.monotonic() - t0, 3)
            if self._machine_since is not None:
                hours = (time.time() - self._machine_since) / 3600.0
                self.summary["cost_usd"]["actual"] = provider.estimate_usd(hours)
            self._write_summary()

    def _local_part(self) -> None:
        from brain_cloud.export import export_run

        with self.stage("export"):
            art = self.run_dir / "artifacts" / "run"
            record = json.loads((art / "run.json").read_text())
            record["base"] = str(self.o.base)  # the base as this machine has it
            record["run_id"] = self.run_id
            (art / "run.json").write_text(json.dumps(record))
            self.summary["export"] = export_run(art, self.run_dir / "model", log=self.log)
        if self.o.key is None:
            self.log("no --key: the model directory is ready, no bundle signed")
            return
        with self.stage("bundle"):
            from brain_cloud.bundle import bundle_model

            out, manifest = bundle_model(self.run_dir / "model", self.o.key, self.run_dir,
                                         version=self.o.version, release=self.o.release,
                                         description=f"brain-cloud run {self.run_id}")
            self.summary["paths"]["bundle"] = str(out)
            self.summary["bundle"] = {"id": manifest["bundle_id"],
                                      "version": manifest["version"],
                                      "release": manifest["release"],
                                      "key_id": manifest["key_id"], "bytes": out.stat().st_size}
            self.log(f"bundle {out.name} signed by {manifest['key_id']}")
        if self.o.push is not None:
            push = self.o.push
            with self.stage("push"):
                self.summary["push"] = push(out, self.log)
