"""The `brain` command line (also `python -m brain`).

Exit codes: 0 ok, 1 a check failed or the daemon refused, 2 bad usage or configuration.
Errors are one line on stderr; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from brain import __version__
from brain.config import PROFILES, ConfigError, config_as_dict, load_config, render_toml
from brain.control.modes import REQUESTS
from brain.control_socket import ControlClient, ControlError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("brain")


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _client(args: argparse.Namespace) -> ControlClient:
    return ControlClient(args.config.socket_path)


# -- commands -------------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    import faulthandler
    import os

    from brain.daemon import Daemon

    faulthandler.enable()  # a watchdog SIGABRT then leaves every thread's stack in the journal
    return Daemon(args.config, test_hooks=os.environ.get("BRAIN_TEST_HOOKS") == "1").run()


def cmd_status(args: argparse.Namespace) -> int:
    st = _client(args).call("status", histogram=bool(getattr(args, "histogram", False)))
    if args.json:
        _print_json(st)
        return EXIT_OK
    lat = st.get("lateness_ms", {})
    reason = f" ({st['estop_reason']})" if st.get("estop_reason") else ""
    print(f"mode       {st['mode']}{reason}")
    print(f"profile    {st['profile']}    model {st['model']}")
    print(f"rate       {st.get('rate_hz', 0):.3f} Hz of {st.get('target_hz', 0):g} Hz "
          f"({st.get('ticks', 0)} ticks)")
    print(f"lateness   p50 {lat.get('p50', 0):.3f} ms  p99 {lat.get('p99', 0):.3f} ms  "
          f"max {lat.get('max', 0):.3f} ms")
    print(f"overruns   {st.get('overruns', 0)} (missed ticks {st.get('missed_ticks', 0)})")
    act = st.get("action", {})
    print(f"action     steering {act.get('steering', 0):+.3f} "
          f"throttle {act.get('throttle', 0):+.3f} ({act.get('source', '-')})")
    print(f"uptime     {st['uptime_s']:.1f} s")
    return EXIT_OK


def cmd_mode(args: argparse.Namespace) -> int:
    res = _client(args).call("mode", mode=args.mode)
    print(res["mode"])
    return EXIT_OK


def cmd_drive(args: argparse.Namespace) -> int:
    client = _client(args)
    end = time.monotonic() + args.hold
    while True:
        client.call("drive", steering=args.steering, throttle=args.throttle)
        if time.monotonic() >= end:
            break
        time.sleep(0.05)  # 20 Hz refresh keeps the 250 ms deadman satisfied
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    if args.action == "defaults":
        sys.stdout.write(render_toml())
    elif args.action == "show":
        _print_json({"source": args.config.source, "config": config_as_dict(args.config)})
    else:  # check
        print(f"ok: {args.config.source}")
    return EXIT_OK


def cmd_debug_stall(args: argparse.Namespace) -> int:
    _print_json(_client(args).call("debug.stall", seconds=args.seconds))
    return EXIT_OK


# -- parser ---------------------------------------------------------------------------------------

def _register_plugins(sub: argparse._SubParsersAction, make_client: Callable[[], Any]) -> None:
    """Command groups owned by other packages register themselves here."""
    import importlib

    for module in ("brain.rlds.cli", "brain.diag.cli", "brain.api.cli", "brain.collect",
                   "brain.neutral", "brain.ota.cli", "brain.train.cli", "brain.fieldplan"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                continue  # that part is not installed in this build
            raise
        mod.register(sub, make_client)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Any]]:
    holder: dict[str, Any] = {}

    def make_client(_args: Any = None) -> ControlClient:
        return ControlClient(holder["config"].socket_path)

    p = argparse.ArgumentParser(prog="brain", description="Edge runtime of a learning robot.")
    p.add_argument("--version", action="version", version=f"brain {__version__}")
    p.add_argument("--config", dest="config_path", metavar="PATH",
                   help="configuration file (default: $BRAIN_CONFIG, /etc/brain/brain.toml, "
                        "else built-in defaults)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    r = sub.add_parser("run", help="run the daemon")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--sim", action="store_const", const="sim", dest="profile",
                   help="simulated robot (same as --profile sim)")
    g.add_argument("--profile", choices=PROFILES, help="robot profile")
    r.add_argument("--config", dest="config_path_sub", metavar="PATH", help=argparse.SUPPRESS)
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("status", help="status of the running daemon")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--histogram", action="store_true", help="include the lateness histogram")
    s.set_defaults(func=cmd_status)

    m = sub.add_parser("mode", help="change mode: " + ", ".join(REQUESTS))
    m.add_argument("mode", choices=REQUESTS)
    m.set_defaults(func=cmd_mode)

    d = sub.add_parser("drive", help="send a manual command (needs manual mode)")
    d.add_argument("--steering", type=float, required=True, help="-1 (left) .. 1 (right)")
    d.add_argument("--throttle", type=float, required=True, help="-1 (reverse) .. 1 (forward)")
    d.add_argument("--hold", type=float, default=0.0, metavar="S",
                   help="repeat the command for S seconds (default: once; the deadman stops "
                        "the robot 250 ms later)")
    d.set_defaults(func=cmd_drive)

    c = sub.add_parser("config", help="check, show or print the default configuration")
    c.add_argument("action", choices=("check", "show", "defaults"))
    c.set_defaults(func=cmd_config)

    dbg = sub.add_parser("debug", help="test hooks (only with BRAIN_TEST_HOOKS=1)")
    dsub = dbg.add_subparsers(dest="debug_cmd", required=True)
    st = dsub.add_parser("stall", help="test hook: stall the control loop (BRAIN_TEST_HOOKS=1)")
    st.add_argument("--seconds", type=float, required=True)
    st.set_defaults(func=cmd_debug_stall)

    _register_plugins(sub, make_client)
    return p, holder


def _setup_logging(level: str) -> None:
    try:
        from brain.logsetup import setup_logging
    except ModuleNotFoundError:
        logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: "
                            "%(message)s")
    else:
        setup_logging(level)


def main(argv: list[str] | None = None) -> int:
    parser, holder = build_parser()
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    if getattr(args, "profile", None):
        overrides["profile"] = args.profile
    path = getattr(args, "config_path_sub", None) or args.config_path
    try:
        cfg = load_config(path, overrides=overrides)
    except ConfigError as e:
        print(f"brain: configuration error: {e}", file=sys.stderr)
        return EXIT_USAGE
    holder["config"] = cfg
    args.config = cfg
    args.episodes_dir = cfg.layout.episodes
    args.export_origin = cfg.export.origin
    _setup_logging(cfg.log_level)
    try:
        return int(args.func(args) or 0)
    except ControlError as e:
        print(f"brain: {e}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
