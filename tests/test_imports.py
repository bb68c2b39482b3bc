"""Process-model rules that are easy to break by accident: the control loop imports no HTTP,
torch or SQLite, and the daemon never imports torch (start-up stays fast, memory small)."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN_IN_LOOP = ("torch", "fastapi", "uvicorn", "starlette", "httpx", "sqlite3", "aiohttp")


def imported_after(code: str) -> set[str]:
    probe = code + ("\nimport sys, json\n"
                    "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_control_loop_imports_no_http_torch_or_sqlite():
    mods = imported_after("import brain.control.loop, brain.control.policy, "
                          "brain.control.modes, brain.hardware.sim, brain.rlds.recorder")
    assert not mods & set(FORBIDDEN_IN_LOOP), mods & set(FORBIDDEN_IN_LOOP)


def test_daemon_with_api_never_imports_torch():
    mods = imported_after("import brain.daemon, brain.service, brain.api.server, brain.cli")
    assert "torch" not in mods and "tensorflow" not in mods


def test_cli_commands_do_not_import_the_http_stack():
    """`brain status`, `brain episodes …` etc. build the whole parser (every plugin) but need no
    FastAPI: importing it made every command ~0.4 s slower to start."""
    mods = imported_after("import brain.cli; brain.cli.build_parser()")
    assert not mods & {"fastapi", "uvicorn", "starlette", "pydantic"}, \
        mods & {"fastapi", "uvicorn", "starlette", "pydantic"}


def test_daemon_and_service_do_not_import_each_other_in_a_circle():
    """Data flows one way: the daemon composes the service, the service knows nothing of the
    daemon (it was daemon.py <-> daemon_service.py)."""
    out = subprocess.run([sys.executable, "-c", "import brain.service, sys; "
                          "print('brain.daemon' in sys.modules)"], capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
