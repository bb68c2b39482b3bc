"""Ed25519 keys for bundles (ota/SPEC.md section 3), through `cryptography`.

Private keys are PKCS#8 PEM files (0600), public keys SubjectPublicKeyInfo PEM. A key's id is
`ed25519:` + the first 16 hex digits of SHA-256 of its 32 raw public bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from brain.durable import atomic_write_bytes

log = logging.getLogger(__name__)

DEVICE_KEY = "device"  # <state_dir>/keys/device.key


class KeyFileError(ValueError):
    """A key file is missing, unreadable or not an Ed25519 key; the message names it."""


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def private_pem(private: Ed25519PrivateKey) -> bytes:
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def generate(out_dir: Path, name: str) -> tuple[Path, Path]:
    """Write `<name>.key` (0600) and `<name>.pub` in `out_dir`; refuses to overwrite."""
    out_dir.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    for p in (key_path, pub_path):
        if p.exists():
            raise KeyFileError(f"{p} already exists; not overwriting a key")
    private = Ed25519PrivateKey.generate()
    atomic_write_bytes(key_path, private_pem(private), mode=0o600)
    atomic_write_bytes(pub_path, public_pem(private.public_key()), mode=0o644)
    return key_path, pub_path


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise KeyFileError(f"{path}: not a readable PKCS#8 PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as e:
        raise KeyFileError(f"{path}: not a readable PEM public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 key")
    return key


def sign(private: Ed25519PrivateKey, data: bytes) -> bytes:
    return private.sign(data)


def verify(public: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        public.verify(signature, data)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class Keyring:
    """Keys trusted for each origin: `publisher` from the trusted-keys directory, `device`
    (the robot's own key) only when local promotion is allowed."""

    publisher: dict[str, Ed25519PublicKey]
    device: dict[str, Ed25519PublicKey]

    def lookup(self, origin: str, kid: str) -> Ed25519PublicKey | None:
        return (self.publisher if origin == "publisher" else
                self.device if origin == "device" else {}).get(kid)

    def pems(self) -> dict[str, list[bytes]]:
        """The keys as PEM per origin (to hand the keyring to a worker process)."""
        return {"publisher": [public_pem(k) for k in self.publisher.values()],
                "device": [public_pem(k) for k in self.device.values()]}

    @classmethod
    def from_pems(cls, pems: dict[str, list[bytes]]) -> Keyring:
        rings: dict[str, dict[str, Ed25519PublicKey]] = {"publisher": {}, "device": {}}
        for origin, blobs in pems.items():
            for blob in blobs:
                key = serialization.load_pem_public_key(blob)
                if isinstance(key, Ed25519PublicKey):
                    rings[origin][key_id(key)] = key
        return cls(rings["publisher"], rings["device"])

    @classmethod
    def load(cls, trusted_dir: Path | None, device_pub: Ed25519PublicKey | None = None
             ) -> Keyring:
        publisher: dict[str, Ed25519PublicKey] = {}
        if trusted_dir is not None and trusted_dir.is_dir():
            for path in sorted(trusted_dir.glob("*.pub")):
                try:
                    public = load_public(path)
                except KeyFileError as e:
                    log.warning("ignoring %s", e)
                    continue
                publisher[key_id(public)] = public
        device = {key_id(device_pub): device_pub} if device_pub is not None else {}
        return cls(publisher, device)


def device_key(keys_dir: Path) -> Ed25519PrivateKey:
    """The robot's own signing key, made on first use (0600 in the state dir's keys/)."""
    path = keys_dir / f"{DEVICE_KEY}.key"
    if path.exists():
        return load_private(path)
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    atomic_write_bytes(path, private_pem(private), mode=0o600)
    atomic_write_bytes(keys_dir / f"{DEVICE_KEY}.pub", public_pem(private.public_key()),
                       mode=0o644)
    os.chmod(keys_dir, 0o700)
    log.info("made the device signing key %s (%s)", path, key_id(private.public_key()))
    return private
