"""What every route handler shares: the service, the pairing store, and a few settings."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from brain.api.pairing import Pairing
from brain.api.service import BrainService


@dataclass
class ApiContext:
    service: BrainService
    pairing: Pairing
    fingerprint: str  # device certificate SHA-256 (hex)
    tls: bool  # served over HTTPS
    deadman_s: float = 0.25  # robot-side teleop deadman (safety.deadman_ms)
    camera_fps: float = 10.0  # MJPEG frame-rate cap
    telemetry_hz: float = 10.0
    closing: threading.Event = field(default_factory=threading.Event)  # ends open streams
    exports: dict[str, Path] = field(default_factory=dict)  # downloadable archives by name

    @property
    def teleop_silence_s(self) -> float:
        # Release a silent link well before the service's own deadman fires, so neutral is
        # reached within deadman_s even when this thread is scheduled late.
        return self.deadman_s * 0.6
