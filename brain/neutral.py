"""`brain neutral`: put the actuators in neutral without the daemon.

The PCA9685 keeps generating its last pulses when the process that set them dies, and SIGKILL
(or a watchdog abort) gives the daemon no chance to clean up. systemd runs this as the unit's
ExecStopPost=, so every stop of the service, however it happened, ends with neutral pulses.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from brain.control_socket import ControlClient, ControlError, DaemonNotRunning
from brain.hardware.robot import RobotError


def register(subparsers: Any, make_client: Callable[..., Any]) -> None:
    p = subparsers.add_parser("neutral", help="set the actuators neutral without the daemon "
                                              "(run by systemd after the service stops)")
    p.add_argument("--force", action="store_true",
                   help="even if a daemon answers on the control socket")
    p.set_defaults(func=lambda a: cmd_neutral(a, make_client))


def cmd_neutral(args: argparse.Namespace, make_client: Callable[..., ControlClient],
                smbus_factory: Any = None) -> int:
    cfg = args.config
    if not args.force:
        try:
            make_client().call("ping")
        except DaemonNotRunning:
            pass
        except ControlError:
            pass  # a stale or unreadable socket: no daemon is driving
        else:
            print("brain neutral: a daemon is running and owns the actuators; use "
                  "`brain mode idle` (or --force)", file=sys.stderr)
            return 1
    if cfg.profile == "sim":
        print("simulator: no actuators to neutralise")
        return 0
    from brain.hardware.pca9685 import DonkeyPWM

    pwm = DonkeyPWM(cfg.profiles.pi5_donkey, smbus_factory=smbus_factory)
    try:
        pwm.connect()  # connect() itself writes neutral on both channels
    except RobotError as e:
        print(f"brain neutral: {e}", file=sys.stderr)
        return 1
    pwm.close()
    print(f"neutral pulses on {pwm.where}")
    return 0
