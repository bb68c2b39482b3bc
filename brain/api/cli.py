"""`brain pair` and `brain discover`: CLI handlers, registered by the main CLI.

`register(subparsers, make_client)` adds both commands; `make_client(args)` returns a
ControlClient for the running daemon (pairing is an admin action: it goes over the local
socket, whose file permissions are the authentication). Each handler returns the exit code.
Also runnable alone: `python -m brain.api.cli --socket PATH pair --json`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from typing import Any

from brain.control_socket import ControlClient, ControlError

MakeClient = Callable[[argparse.Namespace], ControlClient]


def register(subparsers: Any, make_client: MakeClient) -> None:
    p = subparsers.add_parser("pair", help="show a pairing code; list or revoke paired clients")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--list", action="store_true", help="list paired clients")
    g.add_argument("--revoke", metavar="NAME", help="revoke the token of client NAME")
    p.set_defaults(func=lambda a: cmd_pair(a, make_client(a)))

    d = subparsers.add_parser("discover", help="find robots on the LAN (mDNS)")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.add_argument("--timeout", type=float, default=3.0, metavar="S",
                   help="seconds to browse (default 3)")
    d.add_argument("--interface", action="append", metavar="ADDR",
                   help="browse only on this interface address (repeatable)")
    d.set_defaults(func=cmd_discover)


def _when(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def cmd_pair(args: argparse.Namespace, client: ControlClient) -> int:
    try:
        if args.list:
            result: Any = client.call("pair.list")
        elif args.revoke is not None:
            result = client.call("pair.revoke", name=args.revoke)
        else:
            result = client.call("pair")
    except ControlError as e:
        print(f"brain pair: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    elif args.list:
        for c in result or []:
            print(f"{c['name']}\tpaired {_when(c['created'])}\tfrom {c.get('address', '')}")
        if not result:
            print("no paired clients")
    elif args.revoke is not None:
        print(f"revoked {result['revoked']}")
    else:
        print(f"pairing code {result['code']} (valid until {_when(result['expires'])})")
        if result.get("tls_fingerprint"):
            print(f"TLS fingerprint {result['tls_fingerprint']} (what a companion pins)")
    return 0


def cmd_discover(args: argparse.Namespace) -> int:
    if not 0 < args.timeout <= 60:
        print("brain discover: --timeout must be in (0, 60] seconds", file=sys.stderr)
        return 2
    from brain.api.discovery import discover  # zeroconf only when used

    robots = discover(args.timeout, args.interface)
    if args.json:
        print(json.dumps(robots))
    else:
        for r in robots:
            scheme = "https" if r["tls"] else "http"
            print(f"{r['name']}\t{r['id']}\t{scheme}://{r['host']}:{r['port']}\t"
                  f"fp {r['fp'][:16] or '-'}\tmodel {r['model'] or '-'}")
        if not robots:
            print("no robots found", file=sys.stderr)
    return 0 if robots else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="brain-api")
    parser.add_argument("--socket", required=False, default="var/run/control.sock",
                        help="control socket of the daemon")
    sub = parser.add_subparsers(dest="cmd", required=True)
    register(sub, lambda a: ControlClient(a.socket))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
