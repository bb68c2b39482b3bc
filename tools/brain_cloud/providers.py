"""Where training runs: `local`, `ssh` and `runpod`, behind one interface.

A provider provisions a machine, says when it is ready, gives a Shell to it, and terminates it.
`terminate` must be safe to call at any point (nothing provisioned yet, already gone) and is
called by the orchestrator in a `finally`: a rented machine is always given back.

RunPod (https://docs.runpod.io, GraphQL at /graphql, key as `Authorization: Bearer`):
`podFindAndDeployOnDemand` is tried with each cloud type in turn (COMMUNITY, then SECURE); no
capacity comes back as HTTP 200 with an `errors` array ("There are no longer any instances
available ..."). The create reply already says `desiredStatus: RUNNING`, so readiness is
`runtime` non-null and SSH answering. SSH goes direct when `runtime.ports` maps port 22 on a
public IP, else through RunPod's basic gateway as `<machine.podHostId>@ssh.runpod.io` (no scp,
no sftp: the transfers here never need them). `podTerminate` answers `null` on success.
The key comes from the environment (`RUNPOD_API_KEY`) and is never logged or written.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import string
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brain_cloud.transport import (
    LocalShell,
    Log,
    PtyShell,
    Shell,
    SshTarget,
    StreamShell,
    TransportError,
)

NO_CAPACITY = "no longer any instances available"
PERMANENT_SSH_ERRORS = ("Permission denied", "Host key verification failed",
                        "REMOTE HOST IDENTIFICATION HAS CHANGED", "Could not resolve hostname")


class ProviderError(RuntimeError):
    """Provisioning or termination failed; `transient` when a retry may succeed, `capacity`
    when this provider has no machine now (the next provider in the failover order may)."""

    def __init__(self, message: str, *, transient: bool = False, capacity: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
        self.capacity = capacity


@dataclass
class Machine:
    id: str
    provider: str
    workdir: str  # where the run's files live on the machine
    ssh: SshTarget | None = None
    details: dict[str, Any] = field(default_factory=dict)
    connection_mode: str = ""


class Provider(ABC):
    name: str = ""
    hourly_usd: float = 0.0

    def estimate_usd(self, hours: float) -> float:
        return round(self.hourly_usd * hours, 4)

    @abstractmethod
    def provision(self, run_id: str, log: Log) -> Machine: ...

    def wait_ready(self, machine: Machine, timeout: float, log: Log) -> None:  # noqa: B027
        """Block until the machine takes commands (a local one always does)."""

    @abstractmethod
    def shell(self, machine: Machine) -> Shell: ...

    @abstractmethod
    def terminate(self, machine: Machine | None, log: Log) -> bool:
        """Give the machine back; True once it is gone (also when there was none)."""

    def python(self, machine: Machine) -> str:
        """The Python with brain-cloud installed on the machine."""
        return "python3"


class LocalProvider(Provider):
    """A subprocess here, in a work directory of its own (tests, laptops, a GPU workstation)."""
    name = "local"

    def __init__(self, work_root: Path, python: str) -> None:
        self.work_root = Path(work_root)
        self._python = python

    def provision(self, run_id: str, log: Log) -> Machine:
        work = self.work_root / run_id
        work.mkdir(parents=True, exist_ok=True)
        log(f"local machine: {work}")
        return Machine(id=f"local-{run_id}", provider=self.name, workdir=str(work),
                       connection_mode="local")

    def shell(self, machine: Machine) -> Shell:
        return LocalShell()

    def python(self, machine: Machine) -> str:
        return self._python

    def terminate(self, machine: Machine | None, log: Log) -> bool:
        if machine is None:
            return True
        _kill_run(LocalShell(), machine.workdir)
        shutil.rmtree(machine.workdir, ignore_errors=True)
        log(f"local machine {machine.id} cleaned up")
        return True


def _kill_run(shell: Shell, workdir: str) -> None:
    """Stop whatever the run started there (its process group, recorded in train.pid)."""
    pid = shlex.quote(f"{workdir}/train.pid")
    try:
        # `kill -SIG -PGID`, not `kill -SIG -- -PGID`: dash (the /bin/sh of Debian and Ubuntu,
        # and what a gateway may run) rejects the `--`, and nothing would be stopped.
        shell.run(f"[ -f {pid} ] || exit 0; g=$(cat {pid}); kill -TERM -$g 2>/dev/null "
                  "|| exit 0; for i in $(seq 1 40); do sleep 0.25; kill -0 -$g 2>/dev/null "
                  "|| exit 0; done; kill -KILL -$g 2>/dev/null; true", timeout=30)
    except TransportError:
        pass


def make_shell(target: SshTarget, mode: str, log: Log) -> tuple[Shell, str]:
    """A shell in `mode` (stream, pty, auto); auto tries a plain command without a PTY first
    and falls back to the PTY session when the far side refuses."""
    if mode == "stream":
        return StreamShell(target), "stream"
    if mode == "pty":
        return PtyShell(target), "pty"
    probe = StreamShell(target).run("echo brain-cloud-ok", timeout=60)
    if probe.rc == 0 and "brain-cloud-ok" in probe.text:
        return StreamShell(target), "stream"
    if probe.rc == 255:
        # Refused or unreachable may pass (the machine is still booting); a rejected key or
        # host key will not.
        final = any(s in probe.err for s in PERMANENT_SSH_ERRORS)
        raise TransportError(f"ssh to {target.where} failed: {probe.err.strip()[-300:]}",
                             transient=not final)
    said = (probe.err or probe.text).strip()[-120:]
    log(f"{target.where} refuses commands without a PTY ({said!r}); using a PTY session")
    return PtyShell(target), "pty"


class SshProvider(Provider):
    """Any host reachable with the OpenSSH client as the user has it configured."""
    name = "ssh"

    def __init__(self, target: SshTarget, *, mode: str = "auto", remote_root: str = "",
                 python: str = "python3", hourly_usd: float = 0.0) -> None:
        self.target = target
        self.mode = mode
        self.remote_root = remote_root or "/tmp/brain-cloud"
        self._python = python
        self.hourly_usd = hourly_usd
        self._shells: dict[str, Shell] = {}

    def provision(self, run_id: str, log: Log) -> Machine:
        return Machine(id=f"ssh-{self.target.host}-{run_id}", provider=self.name,
                       workdir=f"{self.remote_root}/{run_id}", ssh=self.target)

    def wait_ready(self, machine: Machine, timeout: float, log: Log) -> None:
        assert machine.ssh is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                shell, mode = make_shell(machine.ssh, self.mode, log)
                shell.check(f"mkdir -p {shlex.quote(machine.workdir)}", timeout=60,
                            what="creating the work directory")
                self._shells[machine.id] = shell
                machine.connection_mode = mode
                log(f"{machine.ssh.where} answers over ssh ({mode} mode)")
                return
            except TransportError as e:
                if not e.transient or time.monotonic() > deadline:
                    raise
                log(f"ssh not ready yet: {e}")
                time.sleep(2)

    def shell(self, machine: Machine) -> Shell:
        return self._shells[machine.id]

    def python(self, machine: Machine) -> str:
        return self._python

    def terminate(self, machine: Machine | None, log: Log) -> bool:
        if machine is None:
            return True
        shell = self._shells.pop(machine.id, None)
        if shell is None:
            return True
        _kill_run(shell, machine.workdir)
        try:
            shell.run(f"rm -rf {shlex.quote(machine.workdir)}", timeout=60)
        except TransportError as e:
            log(f"could not remove {machine.workdir}: {e}")
        shell.close()
        log(f"ssh machine {machine.id}: run stopped and work directory removed")
        return True


class Raw(str):
    """A GraphQL enum value (COMMUNITY): written as is, not as a string literal."""


def gql(template: str, **values: Any) -> str:
    """`template` with each `$name` replaced by its value as a GraphQL literal (strings and
    numbers JSON-encoded, which GraphQL reads the same; Raw values as they are)."""
    return string.Template(template).substitute(
        {k: v if isinstance(v, Raw) else json.dumps(v) for k, v in values.items()})


class RunPodProvider(Provider):
    name = "runpod"

    def __init__(self, *, api_url: str = "https://api.runpod.io/graphql",
                 api_key_env: str = "RUNPOD_API_KEY", gpu_type: str = "NVIDIA RTX A4000",
                 cloud_types: tuple[str, ...] = ("COMMUNITY", "SECURE"),
                 image: str = "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04",
                 gateway: str = "ssh.runpod.io", gateway_port: int = 22, identity: str = "",
                 ssh_options: tuple[str, ...] = (), mode: str = "auto",
                 remote_root: str = "/workspace/brain-cloud", python: str = "python3",
                 hourly_usd: float = 0.25, volume_gb: int = 20) -> None:
        self.api_url = api_url
        self.api_key_env = api_key_env
        self.gpu_type = gpu_type
        self.cloud_types = cloud_types
        self.image = image
        self.gateway, self.gateway_port = gateway, gateway_port
        self.identity, self.ssh_options = identity, ssh_options
        self.ssh = SshProvider(SshTarget(host="-"), mode=mode, remote_root=remote_root,
                               python=python)
        self.remote_root = remote_root
        self.hourly_usd = hourly_usd
        self.volume_gb = volume_gb

    def _key(self) -> str:
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise ProviderError(f"no RunPod API key: set {self.api_key_env}")
        return key

    def graphql(self, query: str) -> dict[str, Any]:
        req = urllib.request.Request(self.api_url, data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {self._key()}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                doc = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise ProviderError(f"RunPod API: HTTP {e.code}", transient=e.code >= 500) from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise ProviderError(f"RunPod API unreachable: {getattr(e, 'reason', e)}",
                                transient=True) from None
        except ValueError:
            raise ProviderError("RunPod API: the reply is not JSON", transient=True) from None
        if not isinstance(doc, dict):
            raise ProviderError("RunPod API: unexpected reply")
        return doc

    def provision(self, run_id: str, log: Log) -> Machine:
        last = ""
        for cloud in self.cloud_types:
            q = gql("mutation { podFindAndDeployOnDemand(input: { cloudType: $cloud, "
                    "gpuCount: 1, gpuTypeId: $gpu, name: $name, imageName: $image, "
                    "volumeInGb: $volume, containerDiskInGb: 20, ports: \"22/tcp\", "
                    "startSsh: true, supportPublicIp: true }) { id desiredStatus imageName "
                    "machineId machine { podHostId } } }", cloud=Raw(cloud), gpu=self.gpu_type,
                    name=f"brain-cloud-{run_id}", image=self.image, volume=self.volume_gb)
            doc = self.graphql(q)
            pod = (doc.get("data") or {}).get("podFindAndDeployOnDemand")
            errors = doc.get("errors") or []
            if pod:
                log(f"RunPod pod {pod['id']} created on {cloud} cloud "
                    f"(desiredStatus {pod.get('desiredStatus')}, not yet booted)")
                host_id = (pod.get("machine") or {}).get("podHostId", "")
                return Machine(id=pod["id"], provider=self.name,
                               workdir=f"{self.remote_root}/{run_id}",
                               details={"cloud_type": cloud, "pod_host_id": host_id,
                                        "machine_id": pod.get("machineId")})
            last = "; ".join(str(e.get("message", e)) for e in errors) or "no pod in the reply"
            if any(NO_CAPACITY in str(e.get("message", "")) for e in errors):
                log(f"RunPod {cloud}: no capacity; trying the next cloud type")
                continue
            raise ProviderError(f"RunPod refused the pod: {last}")
        raise ProviderError(f"RunPod has no capacity ({', '.join(self.cloud_types)}): {last}",
                            capacity=True)

    def wait_ready(self, machine: Machine, timeout: float, log: Log) -> None:
        deadline = time.monotonic() + timeout
        q = gql("query { pod(input: {podId: $id}) { id desiredStatus lastStatusChange "
                "runtime { uptimeInSeconds ports { ip isIpPublic privatePort publicPort type } "
                "} machine { podHostId } } }", id=machine.id)
        while True:
            pod = (self.graphql(q).get("data") or {}).get("pod") or {}
            runtime = pod.get("runtime")
            if runtime:
                break
            if time.monotonic() > deadline:
                raise ProviderError(f"pod {machine.id} did not boot in {timeout:.0f} s "
                                    f"(desiredStatus {pod.get('desiredStatus')})", transient=True)
            log(f"pod {machine.id}: booting (runtime not reported yet)")
            time.sleep(2)
        public = [p for p in runtime.get("ports") or [] if p.get("privatePort") == 22
                  and p.get("isIpPublic")]
        if public:
            machine.ssh = SshTarget(host=public[0]["ip"], user="root",
                                    port=int(public[0]["publicPort"]), identity=self.identity,
                                    options=self.ssh_options)
            machine.details["ssh_route"] = "direct"
        else:
            host_id = (pod.get("machine") or {}).get("podHostId") or \
                machine.details.get("pod_host_id")
            machine.ssh = SshTarget(host=self.gateway, user=str(host_id),
                                    port=self.gateway_port, identity=self.identity,
                                    options=self.ssh_options)
            machine.details["ssh_route"] = "gateway"
        log(f"pod {machine.id} is up; ssh {machine.details['ssh_route']} "
            f"{machine.ssh.where}")
        self.ssh.wait_ready(machine, max(deadline - time.monotonic(), 30.0), log)

    def shell(self, machine: Machine) -> Shell:
        return self.ssh.shell(machine)

    def python(self, machine: Machine) -> str:
        return self.ssh.python(machine)

    def terminate(self, machine: Machine | None, log: Log) -> bool:
        if machine is None:
            return True
        self.ssh.terminate(machine, log)
        doc = self.graphql(gql("mutation { podTerminate(input: {podId: $id}) }",
                               id=machine.id))
        if doc.get("errors"):
            raise ProviderError(f"podTerminate {machine.id}: "
                                f"{'; '.join(str(e.get('message')) for e in doc['errors'])}",
                                transient=True)
        log(f"RunPod pod {machine.id} terminated")
        return True
