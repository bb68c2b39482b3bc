"""What every route handler shares: the service, the pairing store, and a few settings."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from brain.api.pairing import Pairing

if TYPE_CHECKING:
    from brain.service import RobotService


@dataclass
class ApiContext:
    service: RobotService
    pairing: Pairing
    fingerprint: str  # device certificate SHA-256 (hex)
    tls: bool  # served over HTTPS
    camera_fps: float = 10.0  # MJPEG frame-rate cap
    telemetry_hz: float = 10.0
    closing: threading.Event = field(default_factory=threading.Event)  # ends open streams
