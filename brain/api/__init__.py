"""The robot's HTTP API, pairing, TLS, LAN discovery and web teleop page.

The daemon builds `brain.api.server.ApiServer(service, cfg)` around its service object
(`brain.service.RobotService`, whose commands become routes) and calls `start()` / `stop()`.
Nothing here imports the daemon,
and importing the package imports nothing else: the CLI loads `brain.api.cli` for `brain pair`
and `brain discover`, and pulling in FastAPI there cost every `brain` command ~0.4 s.
"""
