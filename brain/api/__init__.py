"""The robot's HTTP API, pairing, TLS, LAN discovery and web teleop page.

The daemon builds `ApiServer(service, cfg, state_dir)` around its `BrainService` and calls
`start()` / `stop()`; see `server.py`. Nothing here imports the daemon.
"""

from brain.api.server import ApiServer
from brain.api.service import BrainService

__all__ = ["ApiServer", "BrainService"]
