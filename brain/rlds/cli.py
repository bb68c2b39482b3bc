"""`brain episodes …` subcommands. `start`/`stop` go to the running daemon over the control
socket; the others work on the episode files directly (`args.episodes_dir`, set by the main CLI
from the config, as is `args.export_origin`). Exit codes: 0 ok, 1 a check failed, 2 bad usage
or unknown episode; errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brain.control_socket import ControlError
from brain.rlds.export import ExportError, prepare_cloud_export
from brain.rlds.store import (
    EpisodeError,
    EpisodeNotFound,
    delete_episode,
    episode_dir,
    list_episodes,
    load_episode,
)
from brain.rlds.validate import validate_all, validate_episode


def register(subparsers: Any, make_client: Callable[[], Any]) -> None:
    ep = subparsers.add_parser("episodes", help="record, inspect, validate and export episodes")
    sub = ep.add_subparsers(dest="episodes_cmd", required=True)

    p = sub.add_parser("list", help="list recorded episodes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_list)
    p = sub.add_parser("show", help="show one episode's metadata and validation report")
    p.add_argument("episode_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_show)
    p = sub.add_parser("validate", help="validate episodes (all by default)")
    p.add_argument("episode_ids", nargs="*", metavar="EPISODE_ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_validate)
    p = sub.add_parser("delete", help="delete episodes")
    p.add_argument("episode_ids", nargs="+", metavar="EPISODE_ID")
    p.set_defaults(func=_delete)
    p = sub.add_parser("export", help="export episodes as an RLDS (TFDS) dataset")
    p.add_argument("--format", choices=["rlds"], default="rlds")
    p.add_argument("--out", required=True, type=Path, help="new or empty output directory")
    p.add_argument("--anonymize", action="store_true",
                   help="hash operator, hostnames, IP/MAC addresses, serial numbers")
    p.add_argument("--episodes", nargs="+", metavar="EPISODE_ID", help="default: all")
    p.add_argument("--name", default="brain_episodes", help="dataset name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_export)
    p = sub.add_parser("start", help="start recording an episode on the running daemon")
    p.add_argument("--operator", default="")
    p.add_argument("--language-instruction", default="")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: _remote(a, make_client, "episodes.start",
                                          operator=a.operator,
                                          language_instruction=a.language_instruction))
    p = sub.add_parser("stop", help="stop the episode being recorded")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: _remote(a, make_client, "episodes.stop"))


def _fail(msg: str, code: int) -> int:
    print(f"brain episodes: {msg}", file=sys.stderr)
    return code


def _guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except EpisodeNotFound as e:
            return _fail(str(e), 2)
        except (EpisodeError, ExportError, OSError) as e:
            return _fail(str(e), 1 if not isinstance(e, ExportError) else 2)
    return run


def _print(args: argparse.Namespace, obj: Any, text: str) -> None:
    print(json.dumps(obj, indent=2, default=str) if args.json else text)


@_guard
def _list(args: argparse.Namespace) -> int:
    eps = list_episodes(args.episodes_dir)
    lines = [f"{e['id']}  {e['status']:<10} {e.get('steps') or 0:>6} steps "
             f"{e.get('frames') or 0:>6} frames  {(e.get('bytes') or 0) / 1e6:8.1f} MB"
             for e in eps]
    _print(args, eps, "\n".join(lines) if lines else f"no episodes in {args.episodes_dir}")
    return 0


@_guard
def _show(args: argparse.Namespace) -> int:
    ep = load_episode(args.episodes_dir, args.episode_id)
    report = validate_episode(args.episodes_dir, args.episode_id, ep)
    obj = {"metadata": ep.meta, "validation": report}
    _print(args, obj, json.dumps(obj, indent=2, default=str))
    return 0


def _report_line(r: dict[str, Any]) -> str:
    extra = f" rate {r['rate_hz']} Hz, skew p99 {r['skew_p99_ms']} ms" if r.get("rate_hz") else ""
    reasons = f"  ({'; '.join(r['reasons'])})" if r["reasons"] else ""
    return f"{r['id']}  {r['status']:<10} {r.get('steps', 0)} steps{extra}{reasons}"


@_guard
def _validate(args: argparse.Namespace) -> int:
    if args.episode_ids:
        reports = [validate_episode(args.episodes_dir, eid) for eid in args.episode_ids]
    else:
        reports = validate_all(args.episodes_dir)
    _print(args, reports, "\n".join(map(_report_line, reports)) or "no episodes")
    return 1 if any(r["status"] == "corrupt" for r in reports) else 0


@_guard
def _delete(args: argparse.Namespace) -> int:
    for eid in args.episode_ids:  # check all first: an unknown id deletes nothing
        episode_dir(args.episodes_dir, eid)
    for eid in args.episode_ids:
        delete_episode(args.episodes_dir, eid)
        print(f"deleted {eid}")
    return 0


@_guard
def _export(args: argparse.Namespace) -> int:
    manifest = prepare_cloud_export(args.episodes_dir, args.out, episode_ids=args.episodes,
                                    anonymize=args.anonymize,
                                    origin=getattr(args, "export_origin", "pi5"),
                                    dataset_name=args.name)
    c = manifest["counts"]
    _print(args, manifest, f"exported {c['episodes']} episodes, {c['steps']} steps, "
                           f"{c['bytes'] / 1e6:.1f} MB to {args.out}")
    return 0


def _remote(args: argparse.Namespace, make_client: Callable[[], Any], cmd: str,
            **kw: Any) -> int:
    try:
        result = make_client().call(cmd, **kw)
    except ControlError as e:
        return _fail(str(e), 1)
    text = result if isinstance(result, str) else json.dumps(result, default=str)
    if cmd == "episodes.start":
        text = result["id"]
    _print(args, result, text)
    return 0
