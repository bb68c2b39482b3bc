"""`brain-cloud`: train off the robot and deliver back (docs/cloud.md).

    brain-cloud ingest EXPORT                   verify a robot's RLDS export, count it
    brain-cloud train --export DIR --run-dir D  train (torchrun for many processes)
    brain-cloud export RUN_DIR --out DIR        model directory: ONNX, golden vectors (TFLite)
    brain-cloud bundle MODEL_DIR --key KEY      signed bundle per ota/SPEC.md
    brain-cloud pair ROBOT --code CODE          pair with a robot found over mDNS
    brain-cloud push BUNDLE --robot ROBOT       upload, follow trial -> commit or rollback
    brain-cloud full-cycle EXPORT --provider P  all of it on a rented machine, always given back
    brain-cloud serve --root DIR --key KEY      channels, rollouts, reports, the page
    brain-cloud publish BUNDLE --channel NAME   offer a bundle to a fleet in stages
    brain-cloud rollout status|halt --channel N follow or stop a rollout
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_FAILED, EXIT_USAGE = 1, 2


def seed_model() -> Path:
    import brain

    return Path(brain.__file__).resolve().parent / "models" / "seed"


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"brain-cloud: {message}", file=sys.stderr)
    return code


def _progress(args: argparse.Namespace) -> Any:
    """Where progress lines go: stderr with --json, so stdout is the JSON alone."""
    stream = sys.stderr if getattr(args, "json", False) else sys.stdout
    return lambda line: print(line, file=stream, flush=True)


def _print(args: argparse.Namespace, obj: Any, text: str) -> None:
    print(json.dumps(obj, indent=2, default=str) if getattr(args, "json", False) else text)


# -- ingest ---------------------------------------------------------------------------------------

def cmd_ingest(args: argparse.Namespace) -> int:
    from brain.rlds.reader import ExportReadError, iter_episodes, verify_export

    try:
        manifest = verify_export(args.export)
        episodes = [{"id": e.id, "steps": len(e), "frames": int(e.frame_new.sum()),
                     "action_dims": int(e.actions.shape[1])}
                    for e in iter_episodes(args.export, manifest)]
    except ExportReadError as e:
        return _fail(str(e))
    counts = manifest["counts"]
    report = {"export": str(args.export), "origin": manifest.get("origin"),
              "dataset_name": manifest.get("dataset_name"), "episodes": episodes,
              "counts": counts, "files_verified": len(manifest["files"])}
    _print(args, report, f"{args.export}: {counts['episodes']} episodes, {counts['steps']} "
                         f"steps, {counts['frames']} frames, {len(manifest['files'])} files "
                         f"verified (sha256), origin {manifest.get('origin')!r}")
    return 0


# -- train ----------------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    import os

    from brain_cloud.train import CloudTrainer, CloudTrainError, load_settings

    main_rank = os.environ.get("RANK", "0") == "0"

    def on_event(event: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(event), flush=True)
        elif event.get("event") == "step":
            print(f"step {event['step']}/{event['max_steps']}  loss {event['loss']:.5f}  "
                  f"{event['steps_per_s']:.1f} steps/s  eta {event['eta_s']:.0f} s", flush=True)
        else:
            print(json.dumps(event), flush=True)

    try:
        settings = load_settings(args.config)
        trainer = CloudTrainer(settings, args.export, args.base or seed_model(), args.run_dir,
                               adapters=args.adapters,
                               on_event=on_event if main_rank else None)
        record = trainer.train(resume=args.resume)
    except CloudTrainError as e:
        return _fail(str(e), EXIT_USAGE)
    return 0 if record["status"] in ("completed", "interrupted") else EXIT_FAILED


# -- export and bundle ----------------------------------------------------------------------------

def cmd_export(args: argparse.Namespace) -> int:
    from brain_cloud.export import export_run
    from brain_cloud.train import CloudTrainError

    try:
        out = export_run(args.run_dir, args.out, tflite=args.tflite,
                         log=lambda m: print(m, file=sys.stderr))
    except CloudTrainError as e:
        return _fail(str(e), EXIT_USAGE)
    _print(args, out, f"{args.out}: {out['id']} (ONNX + golden vectors"
                      + (f", {out['tflite']}" if out["tflite"] else "") + ")")
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from brain.control.model import ModelError
    from brain.ota.keys import KeyFileError
    from brain_cloud.bundle import bundle_model

    try:
        out, manifest = bundle_model(args.model_dir, args.key, args.out_dir,
                                     version=args.version, release=args.release,
                                     targets=tuple(args.targets))
    except (KeyFileError, ModelError, OSError, ValueError) as e:
        return _fail(f"cannot build the bundle: {e}", EXIT_USAGE)
    _print(args, {"bundle": str(out), "manifest": manifest},
           f"{out}: {manifest['bundle_id']} signed by {manifest['key_id']}")
    return 0


# -- robots ---------------------------------------------------------------------------------------

def cmd_pair(args: argparse.Namespace) -> int:
    from brain_cloud.push import PushError, pair

    try:
        entry = pair(args.robot, args.code, url=args.url, fingerprint=args.fingerprint,
                     allow_plain_http=args.allow_plain_http, log=_progress(args))
    except (PushError, OSError) as e:
        return _fail(str(e))
    _print(args, entry, "")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from brain_cloud.push import PushError, push

    try:
        out = push(args.bundle, args.robot, url=args.url, timeout=args.timeout,
                   allow_plain_http=args.allow_plain_http, log=_progress(args))
    except (PushError, OSError) as e:
        return _fail(str(e))
    _print(args, out, f"{out['bundle_id']} on {out['robot']}: {out['final']}")
    return 0 if out["committed"] else EXIT_FAILED


# -- full cycle -----------------------------------------------------------------------------------

def make_providers(args: argparse.Namespace) -> list[Any]:
    from brain_cloud.providers import LocalProvider, RunPodProvider, SshProvider
    from brain_cloud.transport import SshTarget

    host, _, port = args.ssh_host.partition(":") if args.ssh_host else ("", "", "")
    user, _, host = host.rpartition("@")
    target = SshTarget(host=host, user=user, port=int(port or 22), identity=args.ssh_identity,
                       options=tuple(args.ssh_option))
    gw_host, _, gw_port = args.runpod_gateway.partition(":")
    out: list[Any] = []
    for name in args.provider:
        if name == "local":
            out.append(LocalProvider(args.runs / ".machines", args.remote_python or
                                     sys.executable))
        elif name == "ssh":
            if not host:
                raise SystemExit(_fail("--provider ssh needs --ssh-host [USER@]HOST[:PORT]",
                                       EXIT_USAGE))
            out.append(SshProvider(target, mode=args.ssh_mode, python=args.remote_python
                                   or "python3", remote_root=args.remote_root,
                                   hourly_usd=args.hourly_usd))
        elif name == "runpod":
            out.append(RunPodProvider(api_url=args.runpod_api_url, gpu_type=args.runpod_gpu,
                                      gateway=gw_host, gateway_port=int(gw_port or 22),
                                      identity=args.ssh_identity,
                                      ssh_options=tuple(args.ssh_option), mode=args.ssh_mode,
                                      python=args.remote_python or "python3",
                                      remote_root=args.remote_root or "/workspace/brain-cloud",
                                      hourly_usd=args.runpod_hourly_usd))
    return out


def cmd_full_cycle(args: argparse.Namespace) -> int:
    from brain_cloud.cycle import Cycle, CycleError, CycleOptions, Interrupted

    push_fn = None
    if args.push:
        from brain_cloud.push import push

        def push_fn(bundle: Path, log: Any) -> dict[str, Any]:
            return push(bundle, args.push, url=args.push_url, log=log)

    opts = CycleOptions(export=args.export, runs_root=args.runs, providers=make_providers(args),
                        base=args.base or seed_model(), train_config=args.config,
                        adapters=args.adapters, nproc=args.nproc, key=args.key,
                        version=args.version, release=args.release,
                        budget_usd=args.budget_usd, push=push_fn, run_id=args.run_id,
                        assumed_steps_per_s=args.assumed_steps_per_s)
    progress = sys.stderr if args.json else sys.stdout  # --json: stdout is the summary alone
    cycle = Cycle(opts, echo=lambda line: print(line, file=progress, flush=True))
    try:
        summary = cycle.run()
    except Interrupted as e:
        return _fail(f"interrupted ({e}); the machine was terminated, summary in "
                     f"{cycle.run_dir / 'run-summary.json'}", 128 + e.signum)
    except CycleError as e:
        return _fail(f"{e}; summary in {cycle.run_dir / 'run-summary.json'}")
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


# -- fleet ----------------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    import shlex

    from brain_cloud.serve import ServeConfig, run

    public = args.public_url or f"http://{args.host}:{args.port}"
    args.channel = args.channel or ["stable"]
    if not args.doc_lifetime > 0 or not args.refresh_every > 0:
        return _fail("--doc-lifetime and --refresh-every must be positive", EXIT_USAGE)
    cfg = ServeConfig(root=args.root, key=args.key, public_url=public.rstrip("/"),
                      cycle_args=shlex.split(args.cycle_args), channel_names=args.channel,
                      doc_lifetime_s=args.doc_lifetime, refresh_every_s=args.refresh_every)
    if args.token:
        cfg.token = args.token
    run(cfg, args.host, args.port)
    return 0


def _admin(args: argparse.Namespace) -> Any:
    import httpx

    token = args.token or os.environ.get("BRAIN_CLOUD_TOKEN", "")
    if not token:
        raise SystemExit(_fail("the admin token is needed: --token or BRAIN_CLOUD_TOKEN "
                               "(printed by brain-cloud serve)", EXIT_USAGE))
    return httpx.Client(base_url=args.server.rstrip("/"), timeout=120,
                        headers={"Authorization": f"Bearer {token}"})


def cmd_publish(args: argparse.Namespace) -> int:
    if bool(args.server) == bool(args.dir):
        return _fail("give --server URL (a running brain-cloud serve) or --dir DIR (files "
                     "for a static host)", EXIT_USAGE)
    stages = tuple(args.stages)
    if args.dir:
        from brain_cloud.fleet import FleetError, Rollout

        if args.key is None:
            return _fail("--dir needs --key (the publisher key signs the channel)", EXIT_USAGE)
        try:
            doc = Rollout(args.dir, args.key).publish(args.bundle, stages=stages,
                                                      threshold=args.threshold)
        except (FleetError, OSError, ValueError) as e:
            return _fail(str(e), EXIT_USAGE)
    else:
        with _admin(args) as c, open(args.bundle, "rb") as fh:
            r = c.post(f"/api/channels/{args.channel}/publish", content=fh.read(),
                       params={"stages": ",".join(map(str, stages)),
                               "threshold": args.threshold})
        if r.status_code != 200:
            return _fail(f"publish refused: HTTP {r.status_code}: {r.text[:300]}")
        doc = r.json()
    _print(args, doc, f"channel {doc['channel']} seq {doc['seq']}: {doc['bundle']['id']} at "
                      f"{doc['rollout']['percent']}%")
    return 0


def cmd_channel(args: argparse.Namespace) -> int:
    """`channel refresh`: re-sign a static channel once less than half of its document's
    lifetime is left (run it daily from a timer; serve does this itself)."""
    from brain_cloud.fleet import FleetError, Rollout

    if not (args.dir / "channel.json").is_file():
        return _fail(f"{args.dir}: no channel.json (publish --dir makes one)", EXIT_USAGE)
    try:
        r = Rollout(args.dir, args.key)
        done = r.refresh_if_due()
    except (FleetError, OSError, ValueError) as e:
        return _fail(str(e), EXIT_USAGE)
    doc = json.loads((args.dir / "channel.json").read_text())
    _print(args, {"refreshed": done, "seq": doc["seq"], "expires": doc["expires"]},
           f"channel {doc['channel']}: {'re-signed' if done else 'still fresh'}, seq "
           f"{doc['seq']}, expires {doc['expires']}")
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    with _admin(args) as c:
        if args.action == "halt":
            r = c.post(f"/api/channels/{args.channel}/halt",
                       params={"rollback": str(not args.no_rollback).lower()})
            if r.status_code != 200:
                return _fail(f"HTTP {r.status_code}: {r.text[:300]}")
            st = r.json()
        else:
            r = c.get("/api/status")
            if r.status_code != 200:
                return _fail(f"HTTP {r.status_code}: {r.text[:300]}")
            found = [ch for ch in r.json()["channels"] if ch["channel"] == args.channel]
            if not found:
                return _fail(f"no channel {args.channel!r}")
            st = found[0]
    lines = [f"{st['channel']}: {st['state']}, "
             f"{(st['bundle'] or {}).get('id', 'no bundle')} at {st['percent']}%"]
    lines += [f"  {r['id']}  bucket {r['bucket']}  {'in stage' if r['in_stage'] else '':8}  "
              f"{r['active'] or '-'}  {r['result'] or ''} {r['reason'] or ''}"
              for r in st["robots"]]
    _print(args, st, "\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="brain-cloud", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("ingest", help="verify an RLDS export against its manifest")
    s.add_argument("export", type=Path)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("train", help="train the policy on an export (torchrun for DDP)")
    s.add_argument("--export", required=True, type=Path)
    s.add_argument("--run-dir", required=True, type=Path, help="checkpoints, run.json, weights")
    s.add_argument("--config", type=Path, help="training configuration JSON (docs/cloud.md)")
    s.add_argument("--base", type=Path, help="base model directory (default: the seed)")
    s.add_argument("--adapters", type=Path, help="the robot's candidate adapter to start from")
    s.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    s.add_argument("--json", action="store_true", help="one JSON line per event")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("export", help="a model directory from a finished run")
    s.add_argument("run_dir", type=Path)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--tflite", choices=("auto", "on", "off"), default="auto",
                   help="auto: when a converter is installed")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("bundle", help="a signed bundle from a model directory")
    s.add_argument("model_dir", type=Path)
    s.add_argument("--key", required=True, type=Path,
                   help="publisher private key (`brain bundle keygen`)")
    s.add_argument("--version", default="", help="semantic version (default 1.0.<release>)")
    s.add_argument("--release", type=int, default=0, help="release counter (default: now)")
    s.add_argument("--targets", nargs="*", default=[], metavar="ROBOT_ID")
    s.add_argument("--out-dir", type=Path, default=Path("."))
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_bundle)

    s = sub.add_parser("pair", help="pair with a robot (code from `brain pair` on it)")
    s.add_argument("robot", help="its name or id as mDNS shows it")
    s.add_argument("--code", required=True)
    s.add_argument("--url", default="", help="skip mDNS: https://HOST:PORT")
    s.add_argument("--fingerprint", default="", help="the TLS fingerprint `brain pair` prints "
                   "on the robot (64 hex digits or at least the first 16): the certificate "
                   "to pin; needed for HTTPS")
    s.add_argument("--allow-plain-http", action="store_true",
                   help="allow an http:// URL on this machine's loopback (a robot with TLS off)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_pair)

    s = sub.add_parser("push", help="upload a bundle and follow its trial")
    s.add_argument("bundle", type=Path)
    s.add_argument("--robot", required=True)
    s.add_argument("--url", default="")
    s.add_argument("--timeout", type=float, default=300.0)
    s.add_argument("--allow-plain-http", action="store_true",
                   help="allow an http:// URL on this machine's loopback (a robot paired that "
                        "way, with TLS off)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_push)

    s = sub.add_parser("full-cycle", help="provision, upload, train, download, terminate, "
                                          "export, bundle, push")
    s.add_argument("export", type=Path, help="the robot's RLDS export")
    s.add_argument("--provider", action="append", choices=("local", "ssh", "runpod"),
                   required=True, help="repeat for a failover order")
    s.add_argument("--runs", type=Path, default=Path("runs"), help="runs directory")
    s.add_argument("--run-id", default="")
    s.add_argument("--config", type=Path)
    s.add_argument("--base", type=Path)
    s.add_argument("--adapters", type=Path)
    s.add_argument("--nproc", type=int, default=1, help="torchrun processes on the machine")
    s.add_argument("--key", type=Path, help="publisher key: sign the bundle")
    s.add_argument("--version", default="")
    s.add_argument("--release", type=int, default=0)
    s.add_argument("--budget-usd", type=float, help="refuse a run estimated to cost more")
    s.add_argument("--assumed-steps-per-s", type=float, default=20.0,
                   help="training speed for the estimate (default 20)")
    s.add_argument("--hourly-usd", type=float, default=0.0, help="ssh host's price")
    s.add_argument("--ssh-host", default="", metavar="[USER@]HOST[:PORT]")
    s.add_argument("--ssh-identity", default="")
    s.add_argument("--ssh-option", action="append", default=[], metavar="OPT=VALUE")
    s.add_argument("--ssh-mode", choices=("auto", "stream", "pty"), default="auto")
    s.add_argument("--remote-python", default="", help="Python with brain-cloud there")
    s.add_argument("--remote-root", default="", help="work directories there")
    s.add_argument("--runpod-api-url", default="https://api.runpod.io/graphql")
    s.add_argument("--runpod-gpu", default="NVIDIA RTX A4000")
    s.add_argument("--runpod-gateway", default="ssh.runpod.io:22")
    s.add_argument("--runpod-hourly-usd", type=float, default=0.25)
    s.add_argument("--push", default="", metavar="ROBOT", help="push the bundle to this robot")
    s.add_argument("--push-url", default="")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_full_cycle)

    s = sub.add_parser("serve", help="channels, staged rollouts, robots' reports, the page")
    s.add_argument("--root", type=Path, default=Path("."), help="holds channels/ and runs/")
    s.add_argument("--key", required=True, type=Path, help="publisher key: signs channels")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8700)
    s.add_argument("--public-url", default="", help="how robots reach this server "
                   "(default http://HOST:PORT)")
    s.add_argument("--token", default="", help="admin token (default: a new random one)")
    s.add_argument("--channel", action="append", default=[], metavar="NAME",
                   help="channels to open at start (repeatable; default: stable)")
    s.add_argument("--cycle-args", default="", help="arguments of the page's full cycle, "
                   "e.g. \"export/ --provider runpod --key publisher.key\"")
    s.add_argument("--doc-lifetime", type=float, default=7 * 86400, metavar="S",
                   help="seconds a signed channel document is valid (default 7 days); it is "
                        "re-signed once half of that is left")
    s.add_argument("--refresh-every", type=float, default=3600, metavar="S",
                   help="seconds between checks for documents to re-sign (default 3600)")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("channel", help="a static host's channel: re-sign it before it expires")
    s.add_argument("action", choices=["refresh"])
    s.add_argument("--dir", required=True, type=Path, help="the channel directory")
    s.add_argument("--key", required=True, type=Path, help="the publisher key")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_channel)

    s = sub.add_parser("publish", help="offer a bundle on a channel, in stages")
    s.add_argument("bundle", type=Path)
    s.add_argument("--channel", default="stable")
    s.add_argument("--server", default="", help="a running brain-cloud serve")
    s.add_argument("--dir", type=Path, help="or: write the channel's files here")
    s.add_argument("--key", type=Path, help="with --dir: the publisher key")
    s.add_argument("--token", default="")
    s.add_argument("--stages", nargs="+", type=int, default=[10, 25, 50, 100])
    s.add_argument("--threshold", type=float, default=0.25,
                   help="halt when this share of the robots that tried it failed")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_publish)

    s = sub.add_parser("rollout", help="a channel's rollout: status, or halt it")
    s.add_argument("action", choices=("status", "halt"))
    s.add_argument("--channel", default="stable")
    s.add_argument("--server", required=True)
    s.add_argument("--token", default="")
    s.add_argument("--no-rollback", action="store_true",
                   help="halt without telling the robots to roll back")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_rollout)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
