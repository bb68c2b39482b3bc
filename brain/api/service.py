"""The seam between the API and the daemon: what the HTTP layer may ask of the robot.

The daemon implements `BrainService`; the API never touches the control loop, the recorder or
the camera directly. Every method is called from the API's own thread (its asyncio loop), may
be called concurrently, and must return quickly: the daemon answers from snapshots and hands
work to its own threads, so a slow or hostile client can never make the loop thread wait.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

#: Mode names accepted by `set_mode`. `arm` and `reset` are transitions, not resting modes:
#: `arm` enters "autonomous_armed" (policy running, outputs neutral), `drive` enters
#: "autonomous_driving", `reset` leaves a latched e-stop for "idle".
MODE_COMMANDS = ("idle", "manual", "arm", "drive", "estop", "reset")


@runtime_checkable
class BrainService(Protocol):
    def identity(self) -> dict[str, Any]:
        """{"id": stable device id (hex), "name": robot name, "version": software version,
        "model": active model version or ""}."""

    def status(self) -> dict[str, Any]:
        """{"mode", "target_hz", "rate_hz", "ticks", "lateness_ms": {"p50","p99","max"},
        "overruns", "model", "uptime_s", "recorder": {...}, "resources": {"cpu","mem","temp"}}."""

    def set_mode(self, mode: str) -> dict[str, Any]:
        """Apply one of MODE_COMMANDS; returns the new status summary ({"mode": ...} at least).
        Raises ValueError with a message saying why when the transition is refused (for
        example anything but "reset" or "estop" while the e-stop is latched)."""

    def teleop(self, steering: float, throttle: float, client: str) -> None:
        """A teleop command in [-1, 1] each; refreshes the deadman. Acts only in MANUAL; the
        daemon clamps to the safety limits. Must not block."""

    def teleop_release(self, client: str) -> None:
        """The teleop link of `client` closed or went silent: go neutral now."""

    def latest_jpeg(self, max_age_s: float) -> tuple[bytes, float] | None:
        """The latest camera frame, already JPEG-encoded, and its capture time
        (time.monotonic()); None when no frame is newer than max_age_s."""

    def telemetry(self) -> dict[str, Any]:
        """A cheap snapshot for the live view: {"mode", "action": {"steering","throttle"},
        "lateness_ms", "rate_hz", "resources", "recorder"}."""

    def episodes_list(self) -> list[dict[str, Any]]:
        """Recorded episodes, newest first: at least {"id", "steps", "started", ...}."""

    def episodes_start(self, operator: str, language_instruction: str) -> dict[str, Any]:
        """Start recording; returns the new episode's summary. ValueError when refused."""

    def episodes_stop(self) -> dict[str, Any]:
        """Stop recording; returns the finished episode's summary. ValueError when idle."""

    def episodes_delete(self, episode_id: str) -> None:
        """Delete one episode. KeyError when there is no such episode."""

    def episodes_export(self, ids: list[str], anonymize: bool) -> Path:
        """Export the episodes (all when `ids` is empty) as a tar archive and return its path.
        KeyError for an unknown id. May take seconds: the API calls it from a worker thread."""

    def diagnostics(self) -> dict[str, Any]:
        """The health report (what `brain health --json` prints)."""

    def on_change(self, callback: Callable[[], None]) -> None:
        """Register a callback run (from any thread) when identity() changes: name or model.
        The API uses it to refresh the mDNS TXT record."""
