"""Device certificate: created once, key 0600, stable fingerprint matching the served cert."""

from __future__ import annotations

import socket
import ssl

from cryptography import x509

from brain.api.server import is_loopback
from brain.api.tls import ensure_certificate, fingerprint_der
from tests.api_support.client import running_server


def test_certificate_created_once_with_private_key(tmp_path):
    m1 = ensure_certificate(tmp_path / "api", "robby")
    assert m1.key_path.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(m1.cert_path.read_bytes())
    assert cert.subject.rfc4514_string() == "CN=robby"
    assert len(m1.fingerprint) == 64
    m2 = ensure_certificate(tmp_path / "api", "robby")
    assert m2.fingerprint == m1.fingerprint
    (tmp_path / "api" / "tls-cert.pem").write_text("not a cert")
    try:
        ensure_certificate(tmp_path / "api")
    except RuntimeError as e:
        assert "tls-cert.pem" in str(e)
    else:
        raise AssertionError("a corrupt certificate was accepted")


def test_tls_binding_rules():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")


def test_served_certificate_matches_fingerprint(tmp_path):
    with running_server(tmp_path, tls=True) as (server, _svc):
        assert server.url.startswith("https://")
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            with ctx.wrap_socket(raw) as tls:
                der = tls.getpeercert(binary_form=True)
        assert fingerprint_der(der) == server.fingerprint
