"""Schema-based fuzzing (schemathesis) of the served OpenAPI document: no input gives a 5xx.

Runs in-process over ASGI with a paired token. The endless streams (MJPEG, SSE) are left out:
their only input is the auth ticket, which test_api.py covers.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from starlette.testclient import TestClient

from brain.api.app import create_app
from brain.api.context import ApiContext
from tests.api_support.light_service import LightService

_svc = LightService(Path(tempfile.mkdtemp(prefix="brain-fuzz-")), with_ota=True)
_pairing = _svc.service.pairing
assert _pairing is not None
_token = _pairing.pair(_pairing.new_code()["code"], "fuzzer", "testclient")
APP = create_app(ApiContext(service=_svc.service, pairing=_pairing, fingerprint="00" * 32,
                            tls=False))
schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", APP).exclude(
    path_regex=r"(camera\.mjpeg|telemetry)$")


@pytest.fixture(scope="module", autouse=True)
def _stop_service():
    yield
    _svc.close()


def test_openapi_served_and_complete():
    with TestClient(APP) as c:
        doc = c.get("/api/v1/openapi.json").json()
    for path in ("/api/v1/health", "/api/v1/status", "/api/v1/mode", "/api/v1/pair",
                 "/api/v1/episodes", "/api/v1/episodes/export", "/api/v1/diagnostics",
                 "/api/v1/camera.mjpeg", "/api/v1/telemetry"):
        assert path in doc["paths"], path


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case):
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {_token}"}
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text[:300])
    if case.method == "POST" and case.path == "/api/v1/mode" and _svc.mode == "estop":
        _svc.call("mode", mode="reset")  # keep exploring the other transitions
