"""The device's self-signed TLS certificate: created once, kept under `state_dir/api/`.

Clients do not validate it against a CA; they pin its SHA-256 fingerprint, learned from the
pairing response and the mDNS TXT record. An ECDSA P-256 key keeps generation instant on a Pi.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from brain.durable import atomic_write_bytes

log = logging.getLogger(__name__)

CERT_NAME = "tls-cert.pem"
KEY_NAME = "tls-key.pem"
VALIDITY_DAYS = 3650


class TlsError(RuntimeError):
    """The stored certificate or key is unreadable; the message names the file."""


@dataclass(frozen=True)
class TlsMaterial:
    cert_path: Path
    key_path: Path
    fingerprint: str  # SHA-256 of the DER certificate, lowercase hex without separators


def fingerprint_der(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def fingerprint_pem(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    return fingerprint_der(cert.public_bytes(serialization.Encoding.DER))


def _generate(common_name: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64] or "brain")])
    host = socket.gethostname()
    sans: list[x509.GeneralName] = [x509.DNSName("localhost"),
                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    if host and host != "localhost":
        sans += [x509.DNSName(host), x509.DNSName(f"{host}.local")]
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=VALIDITY_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def ensure_certificate(api_dir: str | os.PathLike[str], common_name: str = "brain") -> TlsMaterial:
    """Load the device certificate, creating it (key mode 0600) on first start."""
    d = Path(api_dir)
    d.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = d / CERT_NAME, d / KEY_NAME
    if not (cert_path.is_file() and key_path.is_file()):
        cert_pem, key_pem = _generate(common_name)
        # Key first: a crash between the two writes leaves no certificate, so the next start
        # regenerates both instead of pairing a certificate with a foreign key.
        atomic_write_bytes(key_path, key_pem, mode=0o600)
        atomic_write_bytes(cert_path, cert_pem, mode=0o644)
        log.info("created the device TLS certificate %s", cert_path)
    try:
        fp = fingerprint_pem(cert_path.read_bytes())
        serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, OSError) as e:
        raise TlsError(f"{cert_path} / {key_path}: unreadable TLS certificate or key ({e}); "
                       "delete both to create a new one (clients must pair again)") from None
    if key_path.stat().st_mode & 0o077:
        os.chmod(key_path, 0o600)  # repair a key that was copied with loose permissions
    return TlsMaterial(cert_path, key_path, fp)
