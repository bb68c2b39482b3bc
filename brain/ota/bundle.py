"""Building and verifying signed model bundles (ota/SPEC.md).

`build_bundle` turns a model directory into one signed `.bundle` file. `BundleVerifier.stage`
reads a bundle as a stream and trusts nothing before the signature: the manifest and its
signature come first and are checked before any other member is looked at; each file is then
written to a staging directory while it is hashed, checked against its manifest entry, synced,
and the whole directory renamed into the immutable store. Every refusal is a `BundleError`
with a reason name from SPEC.md section 4.

Before the signature is checked, nothing parses more than two fixed 512-byte ustar headers
(`_plain_header`: a checksum, a NUL-terminated name, an octal size; no pax or GNU extension
record is accepted there). `tarfile`'s parser, whose pax-header handling costs time that grows
with the square of a record's length on some Pythons (CVE-2024-6232), sees only bundles whose
manifest a trusted key signed. After that, tar headers are parsed by `tarfile`, but member data
is read with `os.pread` at the offsets it reports, never extracted by tarfile: only regular
files reach the disk, under the names the manifest gave, hashed on the way.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
import shutil
import signal
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from brain import __version__
from brain.control.model import SPEC_FILE, ModelError, load_spec
from brain.durable import fsync_dir, sha256_file
from brain.ota import keys as keyfiles
from brain.ota.schema import SchemaError, validate_manifest

MANIFEST = "edge_manifest.json"
SIGNATURE = "edge_manifest.sig"
FORMAT = "brain-edge-bundle/1"
GOLDEN_FILE = "golden.f32"
MAX_MANIFEST_BYTES = 64 << 10
SIGNATURE_BYTES = 64
CHUNK = 1 << 20
ROLE_FOR_BACKEND = {"onnxruntime": "onnx", "litert": "tflite"}


class BundleError(Exception):
    """A bundle was refused; `reason` is its name in SPEC.md, `detail` says more."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:  # crosses from a worker process
        return (BundleError, (self.reason, self.detail))


def utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=dt.UTC).timestamp()


def version_tuple(text: str) -> tuple[int, int, int]:
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)", text)
    if not m:
        raise ValueError(f"not a version: {text!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


# -- golden vectors ------------------------------------------------------------------------------

def golden_inputs(count: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """Deterministic model inputs (count x 1 x 3 x h x w float32 in 0..1): smooth images, like
    a pre-processed camera frame, not noise the network never saw."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((count, 1, 3, height, width), np.float32)
    for n in range(count):
        for c in range(3):
            fx, fy, ph = rng.uniform(0.02, 0.3, 3)
            out[n, 0, c] = 0.5 + 0.45 * np.sin(xx * fx + yy * fy + ph * 10)
    return out


def write_golden(path: Path, inputs: np.ndarray, outputs: np.ndarray) -> None:
    data = (np.ascontiguousarray(inputs, dtype="<f4").tobytes()
            + np.ascontiguousarray(outputs, dtype="<f4").tobytes())
    path.write_bytes(data)


def read_golden(path: Path, count: int, width: int, height: int
                ) -> tuple[np.ndarray, np.ndarray]:
    raw = np.frombuffer(path.read_bytes(), dtype="<f4")
    n_in = count * 3 * height * width
    if raw.size != n_in + count * 2:
        raise ValueError(f"{path.name} holds {raw.size} values, expected {n_in + count * 2}")
    return (raw[:n_in].reshape(count, 1, 3, height, width).astype(np.float32),
            raw[n_in:].reshape(count, 2).astype(np.float32))


# -- building ------------------------------------------------------------------------------------

@dataclass
class BuildOptions:
    version: str
    release: int
    name: str = "policy"
    bundle_id: str = ""  # default: <name>-<version>-r<release>
    origin: str = "publisher"
    profiles: tuple[str, ...] = ("sim", "pi5-donkey")
    min_daemon_version: str = __version__
    backends: tuple[str, ...] = ("onnxruntime",)
    max_steering: float = 1.0
    max_throttle: float = 0.6
    max_reverse: float = 0.3
    latency_budget_ms: float = 30.0
    golden_count: int = 4
    golden_tolerance: float = 1e-3
    expires_days: float = 365.0
    targets: tuple[str, ...] = ()
    description: str = ""
    created: float = field(default_factory=time.time)


def model_files(model_dir: Path) -> dict[str, str]:
    """path -> role of every file a model directory's spec names."""
    spec = load_spec(model_dir)
    files = {SPEC_FILE: "spec"}
    for backend, name in spec.files.items():
        files[name] = ROLE_FOR_BACKEND.get(backend, "other")
    if spec.weights:
        files[spec.weights] = "weights"
    for name in spec.extra.get("adapters", []) or []:
        files[str(name)] = "adapter"
    if spec.extra.get("replay"):
        files[str(spec.extra["replay"])] = "replay"
    return files


def build_manifest(model_dir: Path, opts: BuildOptions, key_id: str) -> dict[str, Any]:
    """The manifest for `model_dir` (which must hold the golden file already)."""
    spec = load_spec(model_dir)
    files = model_files(model_dir)
    files[GOLDEN_FILE] = "golden"
    missing = [p for p in files if not (model_dir / p).is_file()]
    if missing:
        raise ModelError(f"{model_dir}: files named by its spec are missing: {missing}")
    for b in opts.backends:
        if b not in spec.files:
            raise ModelError(f"{model_dir}: no file for backend {b!r} (has {list(spec.files)})")
    bundle_id = opts.bundle_id or f"{opts.name}-{opts.version}-r{opts.release}".lower()
    manifest: dict[str, Any] = {
        "format": FORMAT, "bundle_id": bundle_id, "name": opts.name, "version": opts.version,
        "release": opts.release, "created": utc(opts.created),
        "expires": utc(opts.created + opts.expires_days * 86400), "key_id": key_id,
        "origin": opts.origin,
        "compatibility": {
            "robot_profiles": list(opts.profiles), "min_daemon_version": opts.min_daemon_version,
            "model": {"input": {"name": spec.input_name, "width": spec.input_width,
                                "height": spec.input_height, "layout": "NCHW",
                                "dtype": "float32"},
                      "output": {"name": spec.output_name, "names": list(spec.output_names)}}},
        "files": [{"path": p, "sha256": sha256_file(model_dir / p),
                   "size": (model_dir / p).stat().st_size, "role": role}
                  for p, role in sorted(files.items())],
        "preferred_backends": list(opts.backends),
        "safety": {"max_steering": opts.max_steering, "max_throttle": opts.max_throttle,
                   "max_reverse": opts.max_reverse, "latency_budget_ms": opts.latency_budget_ms,
                   "golden": {"file": GOLDEN_FILE, "count": opts.golden_count,
                              "tolerance": opts.golden_tolerance}},
    }
    if opts.targets:
        manifest["targets"] = list(opts.targets)
    if opts.description:
        manifest["description"] = opts.description
    validate_manifest(manifest)
    return manifest


def build_bundle(model_dir: Path, private: Ed25519PrivateKey, opts: BuildOptions,
                 out: Path) -> dict[str, Any]:
    """Golden vectors from the model itself, the manifest, its signature, one tar. Returns the
    manifest. The model directory is copied, not changed."""
    from brain.control.policy import load_policy  # inference only for the golden vectors

    model_dir = Path(model_dir)
    work = out.parent / f".{out.name}.build-{os.urandom(4).hex()}"
    shutil.copytree(model_dir, work)
    try:
        spec = load_spec(work)
        policy = load_policy(str(work), opts.backends[0])
        inputs = golden_inputs(opts.golden_count, spec.input_width, spec.input_height)
        outputs = np.stack([np.asarray(policy.backend.run(x), np.float32).reshape(-1)[:2]
                            for x in inputs])
        write_golden(work / GOLDEN_FILE, inputs, outputs)
        manifest = build_manifest(work, opts, keyfiles.key_id(private.public_key()))
        raw = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
        signature = keyfiles.sign(private, raw)
        tmp = out.with_name(f".{out.name}.tmp")
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, MANIFEST, raw, opts.created)
            _add(tar, SIGNATURE, signature, opts.created)
            for entry in manifest["files"]:
                _add(tar, entry["path"], (work / entry["path"]).read_bytes(), opts.created)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


# -- verifying and staging -----------------------------------------------------------------------

@dataclass(frozen=True)
class Expectations:
    """What the robot requires of a bundle besides its signature."""

    profile: str
    robot_id: str
    daemon_version: str = __version__
    release_floor: int = 0
    max_bundle_bytes: int = 512 << 20
    now: Callable[[], float] = time.time


@dataclass(frozen=True)
class StagedBundle:
    manifest: dict[str, Any]
    manifest_bytes: bytes
    path: Path  # the store directory it now lives in

    @property
    def bundle_id(self) -> str:
        return str(self.manifest["bundle_id"])


def check_policy(manifest: dict[str, Any], want: Expectations) -> None:
    """The robot's own rules (SPEC 4.2) on a manifest whose signature already verified."""
    if want.now() > parse_utc(manifest["expires"]):
        raise BundleError("expired", f"expired at {manifest['expires']}")
    if manifest["origin"] == "publisher" and manifest["release"] < want.release_floor:
        raise BundleError("release-below-floor", f"release {manifest['release']} is below the "
                          f"robot's floor {want.release_floor}")
    comp = manifest["compatibility"]
    if want.profile not in comp["robot_profiles"]:
        raise BundleError("incompatible", f"made for {comp['robot_profiles']}, this robot is "
                          f"{want.profile!r}")
    if version_tuple(want.daemon_version) < version_tuple(comp["min_daemon_version"]):
        raise BundleError("incompatible", f"needs brain {comp['min_daemon_version']}, this is "
                          f"{want.daemon_version}")
    targets = manifest.get("targets")
    if targets is not None and want.robot_id not in targets:
        raise BundleError("not-targeted", f"meant for {len(targets)} other robot(s), not "
                          f"{want.robot_id}")
    roles: dict[str, list[str]] = {}
    for entry in manifest["files"]:
        roles.setdefault(entry["role"], []).append(entry["path"])
    if roles.get("spec") != [SPEC_FILE]:
        raise BundleError("incompatible", f"exactly one spec file {SPEC_FILE} is required")
    golden = manifest["safety"]["golden"]["file"]
    if golden not in roles.get("golden", []):
        raise BundleError("incompatible", f"the golden file {golden} is not listed as golden")
    for backend in manifest["preferred_backends"]:
        if ROLE_FOR_BACKEND[backend] not in roles:
            raise BundleError("incompatible", f"backend {backend} has no "
                              f"{ROLE_FOR_BACKEND[backend]} file")
    paths = [e["path"] for e in manifest["files"]]
    if len(set(paths)) != len(paths) or {MANIFEST, SIGNATURE} & set(paths):
        raise BundleError("schema", "a file is listed twice or under a reserved name")


class BundleVerifier:
    """Verifies bundles into `store` through `staging` (both on the same filesystem)."""

    def __init__(self, keyring: keyfiles.Keyring, store: Path, staging: Path,
                 on_event: Callable[[str], None] | None = None) -> None:
        self.keyring = keyring
        self.store = store
        self.staging = staging
        self.on_event = on_event or (lambda _point: None)  # test hook: kill points

    def stage(self, bundle: Path, want: Expectations) -> StagedBundle:
        try:
            size = os.stat(bundle).st_size
        except OSError as e:
            raise BundleError("not-a-bundle", f"{bundle}: {e.strerror or e}") from None
        if size > want.max_bundle_bytes:
            raise BundleError("too-large", f"{size} bytes, over the {want.max_bundle_bytes} "
                              "allowed (ota.max_bundle_bytes)")
        fd = os.open(bundle, os.O_RDONLY | os.O_CLOEXEC)
        try:
            # The signed head first, by hand: tarfile sees only a bundle a trusted key signed.
            manifest_bytes, signature = _signed_head(fd, size)
            manifest = self._verified_manifest(manifest_bytes, signature)
            with os.fdopen(os.dup(fd), "rb") as fh:
                try:
                    tar = tarfile.open(fileobj=fh, mode="r:")
                except tarfile.TarError as e:
                    raise BundleError("not-a-bundle", f"not an uncompressed tar ({e})") from None
                with tar:
                    return self._stage(tar, fd, size, want, manifest, manifest_bytes,
                                       signature)
        finally:
            os.close(fd)

    def _next(self, tar: tarfile.TarFile) -> tarfile.TarInfo | None:
        try:
            return tar.next()
        except tarfile.TarError as e:
            raise BundleError("truncated", f"unreadable tar header ({e})") from None

    def _stage(self, tar: tarfile.TarFile, fd: int, size: int, want: Expectations,
               manifest: dict[str, Any], manifest_bytes: bytes,
               signature: bytes) -> StagedBundle:
        for name in (MANIFEST, SIGNATURE):  # tarfile takes over from here, past the head
            member = self._next(tar)
            if member is None or member.name != name:
                raise BundleError("unexpected-member", f"{name} read twice differently")
        check_policy(manifest, want)
        expected = {e["path"]: e for e in manifest["files"]}
        existing = self.store / manifest["bundle_id"]
        txid = f"{manifest['bundle_id']}.{os.urandom(4).hex()}"
        work = self.staging / txid
        self.staging.mkdir(parents=True, exist_ok=True)
        work.mkdir()
        try:
            self._extract(tar, fd, expected, work)
            end = tar.offset  # where the end-of-archive marker starts
            if size - end < 1024:
                raise BundleError("truncated", "no end-of-archive marker")
            if any(os.pread(fd, min(CHUNK, size - off), off).strip(b"\0")
                   for off in range(end, size, CHUNK)):
                raise BundleError("trailing-data", "bytes after the end of the archive")
            (work / MANIFEST).write_bytes(manifest_bytes)
            (work / SIGNATURE).write_bytes(signature)
            for p in work.iterdir():
                os.chmod(p, 0o444)
            fsync_dir(work)
            self.on_event("staged-files")
            if existing.exists():
                if (existing / MANIFEST).read_bytes() != manifest_bytes:
                    raise BundleError("already-installed", f"{manifest['bundle_id']} is in the "
                                      "store with other content")
                shutil.rmtree(work)
            else:
                os.chmod(work, 0o555)
                os.rename(work, existing)
                fsync_dir(self.store)
            self.on_event("stored")
        except BaseException:
            _remove_tree(work)
            raise
        return StagedBundle(manifest, manifest_bytes, existing)

    def _verified_manifest(self, raw: bytes, signature: bytes) -> dict[str, Any]:
        # The key id and origin are read before the signature is checked (they pick the key),
        # and nothing else is: the schema check comes after.
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise BundleError("malformed-manifest", f"not JSON ({e})") from None
        if not isinstance(doc, dict):
            raise BundleError("malformed-manifest", "not a JSON object")
        kid, origin = doc.get("key_id"), doc.get("origin")
        public = self.keyring.lookup(str(origin), str(kid))
        if public is None:
            raise BundleError("unknown-key", f"no key {kid!r} trusted for {origin!r} bundles")
        if not keyfiles.verify(public, signature, raw):
            raise BundleError("signature", f"the signature does not verify with {kid}")
        try:
            validate_manifest(doc)
        except SchemaError as e:
            raise BundleError("schema", str(e)) from None
        return doc

    def _extract(self, tar: tarfile.TarFile, fd: int, expected: dict[str, dict[str, Any]],
                 work: Path) -> None:
        seen: set[str] = set()
        while True:
            member = self._next(tar)
            if member is None:
                break
            _check_member(member)
            name = member.name
            if name in seen or name in (MANIFEST, SIGNATURE):
                raise BundleError("duplicate-member", f"{name} appears twice")
            entry = expected.get(name)
            if entry is None:
                raise BundleError("unexpected-member", f"{name} is not in the manifest")
            if member.size != entry["size"]:
                raise BundleError("size-mismatch", f"{name} is {member.size} bytes, the "
                                  f"manifest says {entry['size']}")
            digest = _copy_hashing(fd, member, work / name, self.on_event)
            if digest != entry["sha256"]:
                raise BundleError("hash-mismatch", f"{name} does not hash to the manifest's "
                                  "sha256")
            seen.add(name)
        missing = sorted(set(expected) - seen)
        if missing:
            raise BundleError("missing-member", f"listed but absent: {', '.join(missing)}")


def stage_in_worker(bundle: str, keyring_pems: dict[str, list[bytes]], store: str,
                    staging: str, want: Expectations, kill_at: str = "",
                    daemon_pid: int = 0) -> tuple[dict[str, Any], bytes, str]:
    """`BundleVerifier.stage` for a worker process (brain.procs): the daemon's GIL and CPU
    slot stay with its control loop while hundreds of megabytes are hashed and written. A
    test kill point (`kill_at`) kills the daemon, and so this worker with it."""

    def on_event(point: str) -> None:
        if kill_at and point == kill_at and daemon_pid:
            os.kill(daemon_pid, signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)

    verifier = BundleVerifier(keyfiles.Keyring.from_pems(keyring_pems), Path(store),
                              Path(staging), on_event)
    staged = verifier.stage(Path(bundle), want)
    return staged.manifest, staged.manifest_bytes, str(staged.path)


def verify_stored(directory: str) -> None:
    """Re-hash a stored bundle's files against its manifest (a worker-process function)."""
    d = Path(directory)
    manifest = json.loads((d / MANIFEST).read_bytes())
    for entry in manifest["files"]:
        p = d / entry["path"]
        if not p.is_file() or p.stat().st_size != entry["size"] or \
                sha256_file(p) != entry["sha256"]:
            raise BundleError("hash-mismatch", f"{d.name}/{entry['path']} changed in the store")


def _signed_head(fd: int, size: int) -> tuple[bytes, bytes]:
    """(manifest bytes, signature): the first two members, read with `_plain_header` only."""
    name, msize, at = _plain_header(fd, 0, size)
    if name != MANIFEST:
        raise BundleError("unexpected-member", f"the first member must be {MANIFEST}, not "
                          f"{name!r}")
    if msize > MAX_MANIFEST_BYTES:
        raise BundleError("too-large", f"{MANIFEST} is {msize} bytes (limit "
                          f"{MAX_MANIFEST_BYTES})")
    manifest = _pread_exact(fd, msize, at, MANIFEST)
    name, ssize, sat = _plain_header(fd, at + _blocks(msize), size)
    if name != SIGNATURE:
        raise BundleError("unexpected-member", f"the second member must be {SIGNATURE}")
    if ssize != SIGNATURE_BYTES:
        raise BundleError("signature", f"{SIGNATURE} is {ssize} bytes, not 64")
    return manifest, _pread_exact(fd, ssize, sat, SIGNATURE)


def _blocks(n: int) -> int:
    return (n + 511) // 512 * 512


def _pread_exact(fd: int, n: int, offset: int, what: str) -> bytes:
    data = os.pread(fd, n, offset)
    if len(data) != n:
        raise BundleError("truncated", f"{what} is cut short")
    return data


def _plain_header(fd: int, offset: int, size: int) -> tuple[str, int, int]:
    """(name, size, data offset) of the plain ustar header at `offset`: constant work, and
    nothing but a regular file with a short name is accepted (no pax, no GNU long names)."""
    block = os.pread(fd, 512, offset) if offset + 512 <= size else b""
    if len(block) != 512:
        raise BundleError("truncated", "a tar header is cut short")
    stored = block[148:156].split(b"\0")[0].strip(b" ")
    expected = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    try:
        if int(stored or b"x", 8) != expected:
            raise ValueError
    except ValueError:
        raise BundleError("not-a-bundle", "not a tar header (bad checksum)") from None
    if block[257:263] not in (b"ustar\0", b"ustar "):
        raise BundleError("not-a-bundle", "not a ustar header")
    if block[156:157] not in (b"0", b"\0"):
        raise BundleError("unexpected-member", f"member type {block[156:157]!r} before the "
                          "signature is checked (only plain files may come first)")
    if block[345:500].strip(b"\0"):
        raise BundleError("unsafe-path", "a name prefix before the signature is checked")
    try:
        name = block[:100].split(b"\0")[0].decode("ascii")
        length = int(block[124:136].split(b"\0")[0].strip(b" ") or b"0", 8)
    except (UnicodeDecodeError, ValueError):
        raise BundleError("not-a-bundle", "unreadable name or size in a tar header") from None
    return name, length, offset + 512


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    if (not name or name.startswith(("/", ".")) or "/" in name or "\\" in name
            or "\0" in name or ".." in name):
        raise BundleError("unsafe-path", f"member name {name!r}")
    if not member.isreg() or member.issparse():
        kind = ("link" if member.issym() or member.islnk() else
                "device" if member.isdev() else "directory" if member.isdir() else "special")
        raise BundleError("unsafe-member", f"{name} is a {kind}, not a regular file")


def _copy_hashing(fd: int, member: tarfile.TarInfo, dest: Path,
                  on_event: Callable[[str], None]) -> str:
    """Member data -> `dest` (a new file, fsynced), hashing on the way."""
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    h = hashlib.sha256()
    try:
        remaining, off = member.size, member.offset_data
        while remaining:
            chunk = os.pread(fd, min(CHUNK, remaining), off)
            if not chunk:
                raise BundleError("truncated", f"{member.name} is cut short")
            h.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view):]
            if off == member.offset_data:
                on_event("mid-extract")
            remaining -= len(chunk)
            off += len(chunk)
        os.fsync(out)
    finally:
        os.close(out)
    return h.hexdigest()


def _remove_tree(path: Path) -> None:
    """Remove a staging or store directory even after it was made read-only."""
    if not path.exists():
        return
    for root, dirs, _files in os.walk(path):
        os.chmod(root, 0o755)
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    shutil.rmtree(path, ignore_errors=True)
