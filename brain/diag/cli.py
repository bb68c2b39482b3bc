"""CLI wiring for `brain health`, `brain validate-hardware` and `brain diag bundle`.

Handlers get `args.config` (the loaded Config) and return the exit code: 0 ok, 1 a check
failed, 2 bad usage. Problems are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from brain.config import PROFILES

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _err(msg: str) -> None:
    print(f"brain: {msg}", file=sys.stderr)


def register(sub: argparse._SubParsersAction, make_client: Callable[[], Any]) -> None:
    def cmd_health(args: argparse.Namespace) -> int:
        from brain.diag.health import format_text, report, run_checks

        client = make_client()
        checks = run_checks(args.config, lambda: client.call("status"), quick=args.quick)
        doc = report(checks)
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            print(format_text(checks))
        return EXIT_OK if doc["ok"] else EXIT_FAIL

    def cmd_validate(args: argparse.Namespace) -> int:
        from brain.diag.validate_hw import format_text, validate_hardware, write_log

        if not 0.5 <= args.duration <= 60:
            _err(f"--duration {args.duration:g}: must lie in 0.5..60 seconds")
            return EXIT_USAGE
        doc = validate_hardware(args.config, duration_s=args.duration)
        try:
            write_log(doc, args.log_json)
        except OSError as e:
            _err(f"cannot write {args.log_json}: {e.strerror or e}")
            return EXIT_FAIL
        print(format_text(doc))
        print(f"log: {args.log_json}")
        return EXIT_OK if doc["ok"] else EXIT_FAIL

    def cmd_bundle(args: argparse.Namespace) -> int:
        from brain.diag.bundle import collect, write_bundle

        members = collect(args.config, make_client())
        try:
            write_bundle(members, args.out)
        except OSError as e:
            _err(f"cannot write {args.out}: {e.strerror or e}")
            return EXIT_FAIL
        skipped = json.loads(members["manifest.json"])["not_collected"]
        print(f"wrote {args.out} ({len(members)} files"
              + (f"; not collected: {', '.join(sorted(skipped))}" if skipped else "") + ")")
        return EXIT_OK

    h = sub.add_parser("health", help="check the robot: thermal, power, clock, devices, daemon")
    h.add_argument("--quick", action="store_true",
                   help="judge the loop by the daemon's counters instead of a 1 s sample")
    h.add_argument("--json", action="store_true", help="machine-readable output")
    h.set_defaults(func=cmd_health)

    v = sub.add_parser("validate-hardware",
                       help="the field plan's hardware gate (camera, PCA9685, skew, power)")
    v.add_argument("--profile", choices=PROFILES, help="robot profile (default: the config's)")
    v.add_argument("--log-json", required=True, metavar="PATH",
                   help="write every measurement here as JSON")
    v.add_argument("--duration", type=float, default=2.0, metavar="S",
                   help="seconds to tick the robot for the skew measurement (default 2)")
    v.set_defaults(func=cmd_validate)

    d = sub.add_parser("diag", help="diagnostics for support")
    dsub = d.add_subparsers(dest="diag_cmd", metavar="ACTION")
    dsub.required = True
    b = dsub.add_parser("bundle", help="write a tar.gz with versions, config, logs, health")
    b.add_argument("--out", required=True, metavar="FILE", help="the .tar.gz to write")
    b.set_defaults(func=cmd_bundle)
