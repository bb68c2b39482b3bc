"""Test vectors for ota/SPEC.md, made reproducibly: run it twice, get the same bytes.

    python ota/make_vectors.py OUT_DIR

writes into OUT_DIR:

- `dev.key`, `dev.pub`: a development key pair derived from a fixed seed (never trust it);
  `other.key`, `other.pub`: a second one, trusted by nobody;
- `valid.bundle`: the seed policy as a bundle signed with dev.key (release 5, for the profiles
  sim and pi5-donkey, created 2026-01-01, expiring 2036-01-01);
- `bad-<case>.bundle`: one tampered variant per refusal reason, and `cases.json` mapping each
  file to the reason a verifier must give (with the robot settings the case needs: a release
  floor, a size cap, a robot id).

A verifier in any language passes if it accepts valid.bundle and refuses every bad one with
the listed reason.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from brain.control.model import SEED_MODEL_DIR  # noqa: E402
from brain.ota import keys  # noqa: E402
from brain.ota.bundle import (  # noqa: E402
    MANIFEST,
    SIGNATURE,
    BuildOptions,
    build_bundle,
    parse_utc,
)

CREATED = parse_utc("2026-01-01T00:00:00Z")
ROBOT_ID = "a1b2c3d4e5f6"


def derived_key(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(f"brain ota test vectors: {label}".encode()).digest())


def read_members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path, "r:") as tar:
        out = []
        for m in tar:
            f = tar.extractfile(m)
            out.append((m, f.read() if f is not None else b""))
    return out


def info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, **extra: Any
         ) -> tarfile.TarInfo:
    t = tarfile.TarInfo(name)
    t.size, t.type, t.mtime, t.mode = size, kind, int(CREATED), 0o644
    t.uid = t.gid = 0
    t.uname = t.gname = ""
    for k, v in extra.items():
        setattr(t, k, v)
    return t


def write(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], tail: bytes = b"") -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m, data in members:
            m = info(m.name, len(data) if m.isreg() else 0, m.type,
                     linkname=m.linkname, devmajor=m.devmajor, devminor=m.devminor)
            tar.addfile(m, io.BytesIO(data) if m.isreg() else None)
    path.write_bytes(buf.getvalue() + tail)


def resign(members: list[tuple[tarfile.TarInfo, bytes]], key: Ed25519PrivateKey,
           edit: Any = None, raw: bytes | None = None) -> list[tuple[tarfile.TarInfo, bytes]]:
    manifest = json.loads(members[0][1])
    manifest["key_id"] = keys.key_id(key.public_key())
    if edit is not None:
        edit(manifest)
    data = raw if raw is not None else json.dumps(manifest, indent=2,
                                                  sort_keys=True).encode() + b"\n"
    return [(info(MANIFEST, len(data)), data),
            (info(SIGNATURE, 64), keys.sign(key, data))] + members[2:]


def main(out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    dev, other = derived_key("dev"), derived_key("other")
    for name, key in (("dev", dev), ("other", other)):
        (out / f"{name}.key").write_bytes(keys.private_pem(key))
        (out / f"{name}.key").chmod(0o600)
        (out / f"{name}.pub").write_bytes(keys.public_pem(key.public_key()))
    opts = BuildOptions(version="1.2.0", release=5, name="vectors", created=CREATED,
                        expires_days=3652.5, description="ota/make_vectors.py")
    valid = out / "valid.bundle"
    build_bundle(SEED_MODEL_DIR, dev, opts, valid)
    base = read_members(valid)
    files = base[2:]
    cases: dict[str, dict[str, Any]] = {}

    def case(name: str, reason: str, members: list[tuple[tarfile.TarInfo, bytes]] | None = None,
             data: bytes | None = None, **robot: Any) -> None:
        path = out / f"bad-{name}.bundle"
        if data is not None:
            path.write_bytes(data)
        else:
            assert members is not None
            write(path, members)
        cases[path.name] = {"reason": reason, **robot}

    flipped_sig = bytearray(base[1][1])
    flipped_sig[0] ^= 1
    case("signature", "signature", [base[0], (base[1][0], bytes(flipped_sig))] + files)
    case("unknown-key", "unknown-key", resign(base, other))
    edited = bytearray(base[0][1])
    edited[edited.index(b'"release": 5')+11] = ord("9")
    case("edited-after-signing", "signature", [(base[0][0], bytes(edited)), base[1]] + files)
    case("device-origin", "unknown-key",
         resign(base, dev, edit=lambda m: m.update(origin="device")))
    case("malformed-manifest", "malformed-manifest", resign(base, dev, raw=b"[not json"))
    case("schema", "schema", resign(base, dev, edit=lambda m: m.pop("safety")))
    case("expired", "expired", resign(base, dev, edit=lambda m: m.update(
        expires="2026-01-02T00:00:00Z")))
    case("incompatible-profile", "incompatible", resign(base, dev, edit=lambda m: m[
        "compatibility"].update(robot_profiles=["rover-x"])))
    case("incompatible-daemon", "incompatible", resign(base, dev, edit=lambda m: m[
        "compatibility"].update(min_daemon_version="99.0.0")))
    case("not-targeted", "not-targeted", resign(base, dev, edit=lambda m: m.update(
        targets=["0123456789ab"])), robot_id=ROBOT_ID)
    case("below-floor", "release-below-floor", [base[0], base[1]] + files, release_floor=6)
    tampered = bytearray(files[-1][1])
    tampered[100] ^= 0xFF
    case("hash-mismatch", "hash-mismatch", [base[0], base[1]] + files[:-1]
         + [(files[-1][0], bytes(tampered))])
    case("size-mismatch", "size-mismatch", [base[0], base[1]] + files[:-1]
         + [(files[-1][0], files[-1][1] + b"x")])
    case("swapped-file", "hash-mismatch", [base[0], base[1], (files[0][0], files[1][1][
        :len(files[0][1])].ljust(len(files[0][1]), b"\0"))] + files[1:])
    case("absolute-path", "unsafe-path", [base[0], base[1], (info("/etc/passwd", 3), b"x:x")]
         + files)
    case("dot-dot", "unsafe-path", [base[0], base[1], (info("../policy.onnx", 3), b"abc")]
         + files)
    case("symlink", "unsafe-member", [base[0], base[1], (info(
        "policy.onnx", kind=tarfile.SYMTYPE, linkname="/etc/shadow"), b"")] + files[1:])
    case("hardlink", "unsafe-member", [base[0], base[1], (info(
        "policy.onnx", kind=tarfile.LNKTYPE, linkname=MANIFEST), b"")] + files[1:])
    case("device", "unsafe-member", [base[0], base[1], (info(
        "policy.onnx", kind=tarfile.CHRTYPE, devmajor=1, devminor=3), b"")] + files[1:])
    case("directory", "unsafe-member", [base[0], base[1], (info(
        "models", kind=tarfile.DIRTYPE), b"")] + files)
    case("duplicate", "duplicate-member", [base[0], base[1]] + files + [files[0]])
    case("extra-member", "unexpected-member", [base[0], base[1]] + files
         + [(info("payload.sh", 9), b"rm -rf /\n")])
    case("missing-member", "missing-member", [base[0], base[1]] + files[:-1])
    case("manifest-not-first", "unexpected-member", [base[1], base[0]] + files)
    whole = valid.read_bytes()
    case("truncated", "truncated", data=whole[:len(whole) // 2])
    case("trailing-data", "trailing-data", data=whole + b"\x01" * 10240)
    case("compressed", "not-a-bundle", data=gzip.compress(whole, mtime=0))
    case("endless-data", "too-large", data=whole + bytes(4 << 20),
         max_bundle_bytes=len(whole) + (1 << 20))
    case("garbage", "not-a-bundle", data=hashlib.sha256(b"x").digest() * 64)
    (out / "cases.json").write_text(json.dumps(
        {"valid": "valid.bundle", "trusted": ["dev.pub"], "robot_id": ROBOT_ID,
         "cases": cases}, indent=2, sort_keys=True) + "\n")
    return cases


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    made = main(Path(sys.argv[1]))
    print(f"valid.bundle and {len(made)} tampered bundles in {sys.argv[1]}")
