"""`brain bundle …` (make, sign, check bundles; no daemon needed) and `brain ota …` (the running
daemon's slots, over the control socket).

Exit codes: 0 ok, 1 refused / rolled back / a check failed (the reason named), 2 bad usage.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brain.control_socket import ControlError


def register(subparsers: Any, make_client: Callable[[], Any]) -> None:
    b = subparsers.add_parser("bundle", help="make, sign, verify and inspect model bundles")
    bsub = b.add_subparsers(dest="bundle_cmd", required=True)
    p = bsub.add_parser("keygen", help="make an Ed25519 key pair: NAME.key (0600), NAME.pub")
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    p.add_argument("--name", default="publisher")
    p.set_defaults(func=cmd_keygen)

    p = bsub.add_parser("build", help="a signed .bundle from a model directory")
    p.add_argument("model_dir", type=Path)
    p.add_argument("--key", required=True, type=Path, help="private key (PKCS#8 PEM)")
    p.add_argument("--version", required=True, help="semantic version, e.g. 1.2.0")
    p.add_argument("--release", required=True, type=int, help="monotonic release counter")
    p.add_argument("--out", type=Path, help="default: <bundle-id>.bundle here")
    p.add_argument("--name", default="policy")
    p.add_argument("--bundle-id", default="")
    p.add_argument("--origin", choices=("publisher", "device"), default="publisher")
    p.add_argument("--profiles", nargs="+", default=["sim", "pi5-donkey"])
    p.add_argument("--backends", nargs="+", default=["onnxruntime"])
    p.add_argument("--max-steering", type=float, default=1.0)
    p.add_argument("--max-throttle", type=float, default=0.6)
    p.add_argument("--max-reverse", type=float, default=0.3)
    p.add_argument("--latency-budget-ms", type=float, default=30.0)
    p.add_argument("--golden-count", type=int, default=4)
    p.add_argument("--tolerance", type=float, default=1e-3)
    p.add_argument("--expires-days", type=float, default=365.0)
    p.add_argument("--targets", nargs="*", default=[], metavar="ROBOT_ID")
    p.add_argument("--description", default="")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_build)

    p = bsub.add_parser("sign", help="re-sign a bundle's manifest with another key")
    p.add_argument("bundle", type=Path)
    p.add_argument("--key", required=True, type=Path)
    p.add_argument("--origin", choices=("publisher", "device"))
    p.add_argument("--out", type=Path, help="default: replace the bundle")
    p.set_defaults(func=cmd_sign)

    p = bsub.add_parser("verify", help="check a bundle as a robot would (nothing installed)")
    p.add_argument("bundle", type=Path)
    p.add_argument("--keys", type=Path, help="trusted keys directory (default ota."
                                             "trusted_keys_dir)")
    p.add_argument("--profile", help="robot profile (default: the configured one)")
    p.add_argument("--robot-id", default="", help="for targeted bundles")
    p.add_argument("--release-floor", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = bsub.add_parser("inspect", help="show a bundle's manifest and members (unverified)")
    p.add_argument("bundle", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    o = subparsers.add_parser("ota", help="the running daemon's model slots")
    osub = o.add_subparsers(dest="ota_cmd", required=True)
    p = osub.add_parser("install", help="install a bundle (a path or an http(s) URL): verify, "
                                        "trial, commit or roll back")
    p.add_argument("source")
    p.add_argument("--no-wait", action="store_true", help="return once the trial has begun")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: cmd_install(a, make_client()))
    for name, help_ in (("status", "phase, active, last known good, candidate, last error"),
                        ("list", "bundles in the store"),
                        ("rollback", "abort a trial, or return to the previous bundle"),
                        ("commit", "end a trial's probation now and commit it"),
                        ("gc", "remove bundles nothing refers to")):
        p = osub.add_parser(name, help=help_)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=lambda a, n=name: cmd_ota(a, make_client(), n))


def _fail(msg: str, code: int = 1) -> int:
    print(f"brain: {msg}", file=sys.stderr)
    return code


def _out(args: argparse.Namespace, obj: Any, text: str) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str) if args.json else text)


# -- bundle ------------------------------------------------------------------------------------

def cmd_keygen(args: argparse.Namespace) -> int:
    from brain.ota import keys

    try:
        key, pub = keys.generate(args.out, args.name)
    except keys.KeyFileError as e:
        return _fail(str(e), 2)
    print(f"{key}\n{pub}\nkey id {keys.key_id(keys.load_public(pub))}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from brain.control.model import ModelError
    from brain.ota import keys
    from brain.ota.bundle import BuildOptions, build_bundle
    from brain.ota.schema import SchemaError

    try:
        private = keys.load_private(args.key)
    except keys.KeyFileError as e:
        return _fail(str(e), 2)
    opts = BuildOptions(version=args.version, release=args.release, name=args.name,
                        bundle_id=args.bundle_id, origin=args.origin,
                        profiles=tuple(args.profiles), backends=tuple(args.backends),
                        max_steering=args.max_steering, max_throttle=args.max_throttle,
                        max_reverse=args.max_reverse, latency_budget_ms=args.latency_budget_ms,
                        golden_count=args.golden_count, golden_tolerance=args.tolerance,
                        expires_days=args.expires_days, targets=tuple(args.targets),
                        description=args.description)
    bundle_id = opts.bundle_id or f"{opts.name}-{opts.version}-r{opts.release}".lower()
    out = args.out or Path(f"{bundle_id}.bundle")
    try:
        manifest = build_bundle(args.model_dir, private, opts, out)
    except (ModelError, SchemaError, OSError) as e:
        return _fail(f"cannot build the bundle: {e}", 2)
    _out(args, {"bundle": str(out), "manifest": manifest},
         f"{out}: {manifest['bundle_id']} {manifest['version']} release {manifest['release']}, "
         f"{len(manifest['files'])} files, signed by {manifest['key_id']}")
    return 0


def _members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path, "r:") as tar:
        out = []
        for m in tar:
            f = tar.extractfile(m)
            out.append((m.name, f.read() if f is not None else b""))
    return out


def cmd_sign(args: argparse.Namespace) -> int:
    from brain.ota import keys
    from brain.ota.bundle import MANIFEST, SIGNATURE, _add

    try:
        private = keys.load_private(args.key)
        members = _members(args.bundle)
    except (keys.KeyFileError, OSError, tarfile.TarError) as e:
        return _fail(str(e), 2)
    if [n for n, _ in members[:2]] != [MANIFEST, SIGNATURE]:
        return _fail(f"{args.bundle}: not a bundle (no manifest and signature first)", 2)
    manifest = json.loads(members[0][1])
    manifest["key_id"] = keys.key_id(private.public_key())
    if args.origin:
        manifest["origin"] = args.origin
    raw = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    out = args.out or args.bundle
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, MANIFEST, raw, time.time())
        _add(tar, SIGNATURE, keys.sign(private, raw), time.time())
        for name, data in members[2:]:
            _add(tar, name, data, time.time())
    tmp.replace(out)
    print(f"{out}: signed by {manifest['key_id']} ({manifest['origin']})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from brain.identity import robot_id
    from brain.ota import keys
    from brain.ota.bundle import BundleError, BundleVerifier, Expectations

    cfg = args.config
    trusted = args.keys or Path(cfg.ota.trusted_keys_dir)
    keyring = keys.Keyring.load(trusted)
    if args.keys:  # a directory given by hand may hold the device key too
        for pub in args.keys.glob("*.pub"):
            try:
                public = keys.load_public(pub)
            except keys.KeyFileError:
                continue
            keyring.device[keys.key_id(public)] = public
    want = Expectations(profile=args.profile or cfg.profile,
                        robot_id=args.robot_id or robot_id(cfg.state_path)
                        if cfg.state_path.is_dir() else args.robot_id,
                        release_floor=args.release_floor,
                        max_bundle_bytes=cfg.ota.max_bundle_bytes)
    with tempfile.TemporaryDirectory(prefix="brain-verify-") as tmp:
        verifier = BundleVerifier(keyring, Path(tmp) / "store", Path(tmp) / "staging")
        (Path(tmp) / "store").mkdir()
        try:
            staged = verifier.stage(args.bundle, want)
        except BundleError as e:
            _out(args, {"ok": False, "reason": e.reason, "detail": e.detail},
                 f"refused: {e.reason}: {e.detail}")
            return 1
        from brain.ota.bundle import _remove_tree

        _remove_tree(staged.path)
    m = staged.manifest
    _out(args, {"ok": True, "manifest": m},
         f"ok: {m['bundle_id']} {m['version']} release {m['release']}, signed by "
         f"{m['key_id']} ({m['origin']}), {len(m['files'])} files")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from brain.ota.bundle import MANIFEST

    try:
        with tarfile.open(args.bundle, "r:") as tar:
            members = [{"name": m.name, "size": m.size, "type": m.type.decode(errors="replace")}
                       for m in tar.getmembers()]
            first = tar.extractfile(MANIFEST) if members else None
            manifest = json.load(io.BytesIO(first.read())) if first is not None else None
    except (OSError, tarfile.TarError, KeyError, ValueError) as e:
        return _fail(f"{args.bundle}: not a readable bundle ({e})")
    doc = {"manifest": manifest, "members": members, "verified": False}
    lines = [f"{m['name']:<28} {m['size']:>12}" for m in members]
    if manifest:
        lines.insert(0, f"{manifest.get('bundle_id')} {manifest.get('version')} release "
                        f"{manifest.get('release')} ({manifest.get('origin')}, "
                        f"{manifest.get('key_id')}); not verified: `brain bundle verify`")
    _out(args, doc, "\n".join(lines))
    return 0


# -- ota (the daemon) ------------------------------------------------------------------------------

def _describe(st: dict[str, Any]) -> str:
    def ref(r: Any) -> str:
        return f"{r['bundle_id']} ({r['version']}, release {r['release']})" if r else "-"

    lines = [f"phase       {st['phase']}", f"active      {ref(st['active'])}",
             f"lkg         {ref(st['lkg'])}", f"previous    {ref(st.get('previous'))}",
             f"candidate   {ref(st['candidate'])}", f"floor       {st['release_floor']}"]
    err = st.get("last_error")
    if err:
        lines.append(f"last error  {err.get('reason')}: {err.get('detail')}"
                     f" ({err.get('bundle_id') or '-'})")
    return "\n".join(lines)


def cmd_install(args: argparse.Namespace, client: Any) -> int:
    source = args.source
    if not source.startswith(("http://", "https://")):
        path = Path(source).expanduser().resolve()
        if not path.is_file():
            return _fail(f"{source}: no such bundle file", 2)
        source = str(path)
    try:
        st = client.call("ota.install", source=source)
    except ControlError as e:
        reason = e.fields.get("reason")
        _out(args, {"ok": False, "reason": reason or e.kind, "detail": str(e)},
             f"refused: {e}")
        return 1
    bundle_id = st["candidate"]["bundle_id"]
    if not args.json:
        print(f"{bundle_id}: verified and staged; trial begun", flush=True)
    if args.no_wait:
        _out(args, st, _describe(st))
        return 0
    deadline = time.monotonic() + args.timeout
    seen = st["phase"]
    while time.monotonic() < deadline:
        st = client.call("ota.status")
        if st["phase"] != seen and not args.json:
            print(f"{bundle_id}: {st['phase']}", flush=True)
            seen = st["phase"]
        if st["phase"] in ("committed", "rolled_back", "idle"):
            break
        time.sleep(0.2)
    else:
        return _fail(f"{bundle_id}: still {st['phase']} after {args.timeout:g} s")
    ok = st["phase"] == "committed" and (st["active"] or {}).get("bundle_id") == bundle_id
    if args.json:
        _out(args, {"ok": ok, **st}, "")
    elif not ok:
        err = st.get("last_error") or {}
        print(f"{bundle_id}: rolled back: {err.get('reason')}: {err.get('detail')}",
              file=sys.stderr)
    return 0 if ok else 1


def cmd_ota(args: argparse.Namespace, client: Any, name: str) -> int:
    try:
        result = client.call(f"ota.{name}")
    except ControlError as e:
        return _fail(str(e))
    if name == "list":
        text = "\n".join(f"{b['bundle_id']:<40} {b['version'] or '-':<10} "
                         f"r{b['release']:<5} {b['origin']:<9} {','.join(b['roles']) or '-'}"
                         f"{'  FAILED: ' + b['failed']['reason'] if b['failed'] else ''}"
                         for b in result["bundles"])
    elif name == "gc":
        text = f"removed {len(result['removed'])}: {', '.join(result['removed']) or 'nothing'}"
    else:
        text = _describe(result)
    _out(args, result, text)
    return 0
