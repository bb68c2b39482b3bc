"""`brain collect --teacher`: record demonstrations in the simulator, end to end.

Runs the real control loop on the simulated car with the scripted pure-pursuit teacher as the
teleoperator (MANUAL mode, its commands refreshing the deadman like a human's), and the real
recorder as the loop's step sink, for N episodes of S seconds each. It is a standalone process, so
it works with or without a daemon running.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from brain.config import ConfigError
from brain.control.rt import renice_threads
from brain.hardware.robot import Observation, RobotError
from brain.rig import Rig
from brain.rlds.recorder import RecorderError

if TYPE_CHECKING:
    from brain.config import Config


def register(subparsers: Any, make_client: Callable[[], Any]) -> None:
    from brain.config import SimProfile, schema_fields

    tracks = next(f.metadata["choices"] for n, f, _ in schema_fields(SimProfile) if n == "track")
    p = subparsers.add_parser("collect", help="record teacher demonstrations in the simulator")
    p.add_argument("--teacher", action="store_true", required=True,
                   help="drive with the scripted pure-pursuit teacher (the only source here; "
                        "record human teleop with `brain episodes start|stop` instead)")
    p.add_argument("--episodes", type=int, default=16, metavar="N", help="episodes (default 16)")
    p.add_argument("--seconds", type=float, default=15.0, metavar="S",
                   help="length of each episode (default 15)")
    p.add_argument("--track", choices=tracks, help="track layout (default: the config's)")
    p.add_argument("--track-file", metavar="FILE",
                   help="a track layout file (etc/tracks/README.md); replaces --track")
    p.add_argument("--lockstep", action="store_true",
                   help="simulated time: as fast as the simulator renders, every frame "
                        "recorded (control.lockstep); --seconds are simulated seconds")
    p.add_argument("--daemon", action="store_true",
                   help="record through the running daemon instead of a rig of its own: MANUAL "
                        "mode, the teacher teleoperating (sim.teach), its recorder (real time)")
    p.add_argument("--operator", default="teacher", help="operator stamped on the episodes")
    p.add_argument("--instruction", default="follow the track",
                   help="language_instruction stamped on every step")
    p.set_defaults(func=lambda a: cmd_collect_daemon(a, make_client()) if a.daemon
                   else cmd_collect(a))


def teacher_rig(cfg: Config, operator: str) -> Rig:
    """The daemon's own rig (guard, modes, loop, recorder) on the simulated car, driven by the
    scripted teacher as a teleoperator in MANUAL (also what bench/record.py measures). No
    policy is loaded: the teacher drives. Raises RobotError."""
    renice_threads(cfg.control.nice)  # before the camera thread starts: it inherits it
    sys.setswitchinterval(cfg.control.switch_interval_ms / 1000.0)
    rig = Rig.build(cfg, with_policy=False, operator=operator, model_id="teacher")
    teacher = rig.robot.teacher_action
    modes = rig.modes

    def teleoperate(obs: Observation) -> None:
        a = teacher()
        modes.teleop(a.steering, a.throttle, "teacher", obs.t)

    rig.loop.pre_tick.append(teleoperate)
    return rig


def cmd_collect_daemon(args: argparse.Namespace, client: Any) -> int:
    """Demonstrations recorded by the running daemon, as a person would teleoperate it: the
    teacher drives through the command surface (sim.teach) while its recorder records."""
    from brain.control_socket import ControlError

    if args.track or args.track_file or args.lockstep:
        print("brain collect --daemon: the daemon drives its own track in real time; "
              "--track, --track-file and --lockstep do not apply", file=sys.stderr)
        return 2
    if not 1 <= args.episodes <= 10_000 or not 1.0 <= args.seconds <= 3600:
        print("brain collect: --episodes must be 1..10000 and --seconds 1..3600",
              file=sys.stderr)
        return 2
    try:
        client.call("mode", mode="manual")
        for i in range(args.episodes):
            eid = client.call("episodes.start", operator=args.operator,
                              language_instruction=args.instruction)["id"]
            client.call("sim.teach", seconds=args.seconds)
            time.sleep(args.seconds)
            summary = client.call("episodes.stop")
            print(f"episode {i + 1}/{args.episodes} {eid}: {summary.get('steps', 0)} steps, "
                  f"{summary.get('frames', 0)} frames, {summary.get('status')}", flush=True)
        client.call("mode", mode="idle")
    except ControlError as e:
        print(f"brain collect: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    cfg = args.config
    if cfg.profile != "sim":
        print("brain collect: --teacher needs the simulator (profile sim, not "
              f"{cfg.profile})", file=sys.stderr)
        return 2
    if not 1 <= args.episodes <= 10_000 or not 1.0 <= args.seconds <= cfg.recorder.max_episode_s:
        print("brain collect: --episodes must be 1..10000 and --seconds "
              f"1..{cfg.recorder.max_episode_s}", file=sys.stderr)
        return 2
    if args.track:
        cfg.profiles.sim.track = args.track
    if args.track_file:
        cfg.profiles.sim.track_file = args.track_file
    if args.lockstep:
        cfg.control.lockstep = True
    try:
        rig = teacher_rig(cfg, args.operator)
    except ConfigError as e:
        print(f"brain collect: {e}", file=sys.stderr)
        return 2
    except RobotError as e:
        print(f"brain collect: {e}", file=sys.stderr)
        return 1
    control, loop = rig.episodes, rig.loop
    rig.modes.request("manual")
    recorded: list[str] = []
    try:
        if loop.lockstep:
            loop.hold()  # every episode exactly `seconds` of simulated ticks
        rig.start()
        if not loop.lockstep:
            time.sleep(0.5)  # let the camera deliver before the first step
        for i in range(args.episodes):
            eid = control.start(args.operator, args.instruction)
            if loop.lockstep:
                loop.advance(round(args.seconds * cfg.drive_hz))
            else:
                time.sleep(args.seconds)
            summary = control.stop("completed")
            recorded.append(eid)
            print(f"episode {i + 1}/{args.episodes} {eid}: {summary.get('steps', 0)} steps, "
                  f"{summary.get('frames', 0)} frames, {summary.get('dropped_frames', 0)} dropped"
                  f", {summary.get('status')}", flush=True)
            if summary.get("status") != "complete":
                print(f"brain collect: episode {eid} ended early: {summary.get('end_reason')}",
                      file=sys.stderr)
                return 1
    except (RecorderError, RuntimeError) as e:
        print(f"brain collect: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("brain collect: interrupted; the open episode is finalised", file=sys.stderr)
        return 130
    finally:
        rig.stop()
    st = loop.status()
    print(f"recorded {len(recorded)} episodes in {cfg.layout.episodes} "
          f"(loop {st['rate_hz']:.2f} Hz, lateness p99 {st['lateness_ms']['p99']:.2f} ms, "
          f"overruns {st['overruns']})")
    return 0
