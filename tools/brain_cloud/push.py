"""Pairing with robots and pushing bundles to them (`brain-cloud pair`, `brain-cloud push`).

A robot is found on the LAN over mDNS (`brain.api.discovery.discover`, the robot's own TXT
record: id, name, TLS fingerprint), or given by URL. Its certificate is self-signed: it is
pinned, never checked against a CA. The pin is the SHA-256 fingerprint learned at pairing
(from the TXT record or `--fingerprint`, and confirmed by the pairing reply); every later
connection trusts exactly that certificate (an SSL context whose only trust anchor is it, with
partial chains allowed), so the token is never sent to anything else.

Paired robots live in `~/.config/brain-cloud/robots.json` (mode 0600): id, name, last URL,
token, fingerprint. A push uploads the bundle (POST /api/v1/ota), then follows GET /api/v1/ota
and prints each state until the trial ends: committed, or rolled back with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from brain.durable import atomic_write_json

API = "/api/v1"
Log = Callable[[str], None]


class PushError(RuntimeError):
    """Pairing or delivery failed; the message says what to do."""


def robots_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "brain-cloud" / "robots.json"


def load_robots() -> dict[str, dict[str, Any]]:
    path = robots_file()
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PushError(f"{path}: unreadable ({e}); pair the robots again") from None
    return doc if isinstance(doc, dict) else {}


def save_robot(entry: dict[str, Any]) -> None:
    robots = load_robots()
    robots[entry["id"]] = entry
    path = robots_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_json(path, robots, mode=0o600)


def find_robot(which: str, timeout: float = 3.0) -> dict[str, Any]:
    """A robot on the LAN by id, name or mDNS instance (mDNS browse)."""
    from brain.api.discovery import discover

    found = discover(timeout=timeout)
    match = [r for r in found if which in (r["id"], r["name"], r["instance"])]
    if not match:
        seen = ", ".join(f"{r['name']} ({r['id']})" for r in found) or "none"
        raise PushError(f"no robot {which!r} answered over mDNS in {timeout:.0f} s (seen: "
                        f"{seen}); give --url")
    return match[0]


def url_of(robot: dict[str, Any]) -> str:
    scheme = "https" if robot.get("tls") else "http"
    return f"{scheme}://{robot['host']}:{robot['port']}"


def server_certificate(url: str) -> tuple[str, str]:
    """(SHA-256 fingerprint, PEM) of the certificate the server at `url` presents."""
    parts = urlsplit(url)
    pem = ssl.get_server_certificate((parts.hostname or "", parts.port or 443), timeout=10)
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest(), pem


def pinned_client(url: str, fingerprint: str, token: str = "") -> httpx.Client:
    """An HTTP client for `url` that trusts only the certificate with `fingerprint`."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if not url.startswith("https://"):
        return httpx.Client(base_url=url, headers=headers, timeout=60)
    fp, pem = server_certificate(url)
    if fp != fingerprint.lower():
        raise PushError(f"{url} presents certificate {fp}, not the pinned {fingerprint}: a "
                        "different robot, a new certificate, or someone in between. Pair again "
                        "if the robot's certificate really changed")
    ctx = ssl.create_default_context(cadata=pem)
    ctx.check_hostname = False  # the pin identifies the robot, not a host name
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return httpx.Client(base_url=url, headers=headers, verify=ctx, timeout=60)


def pair(which: str, code: str, *, url: str = "", fingerprint: str = "",
         client_name: str = "brain-cloud", log: Log = print) -> dict[str, Any]:
    robot: dict[str, Any] = {}
    if not url:
        robot = find_robot(which)
        url = url_of(robot)
        fingerprint = fingerprint or robot.get("fp", "")
    if url.startswith("https://") and not fingerprint:
        raise PushError("no fingerprint to pin: discover the robot over mDNS or give "
                        "--fingerprint (the `fp` that `brain discover --json` lists)")
    with pinned_client(url, fingerprint) as c:
        r = c.post(f"{API}/pair", json={"code": code, "client_name": client_name})
    if r.status_code != 200:
        raise PushError(f"pairing refused: HTTP {r.status_code}: {_detail(r)}")
    body = r.json()
    if fingerprint and body.get("fingerprint") != fingerprint:
        raise PushError("the robot's pairing reply names another certificate than the one "
                        "pinned; not pairing")
    entry = {"id": body["id"], "name": body.get("name", robot.get("name", "")), "url": url,
             "token": body["token"], "fingerprint": body.get("fingerprint", fingerprint),
             "paired": time.time()}
    save_robot(entry)
    log(f"paired with {entry['name'] or entry['id']} ({entry['id']}) at {url}")
    return {k: v for k, v in entry.items() if k != "token"}


def _detail(r: httpx.Response) -> str:
    try:
        return str(r.json().get("detail", r.text))
    except ValueError:
        return r.text[:300]


def resolve(which: str, url: str = "") -> dict[str, Any]:
    """A paired robot by id or name; its URL re-discovered over mDNS unless given."""
    robots = load_robots()
    entry = robots.get(which) or next((r for r in robots.values() if r.get("name") == which),
                                      None)
    if entry is None:
        raise PushError(f"robot {which!r} is not paired here; run `brain-cloud pair {which} "
                        "--code CODE` with the code `brain pair` shows on the robot")
    entry = dict(entry)
    if url:
        entry["url"] = url
    else:
        try:
            entry["url"] = url_of(find_robot(entry["id"], timeout=2.0))
        except PushError:
            pass  # the last known URL, then
    return entry


def manifest_of(bundle: Path) -> dict[str, Any]:
    """A bundle's manifest (the tar's first member), its signature not checked (the robot
    verifies) but its shape is: the id names files (`publish` writes `bundles/<id>.bundle`),
    so an id such as `../../x` must never get that far."""
    import tarfile

    from brain.ota.schema import validate_manifest

    try:
        with tarfile.open(bundle) as tar:
            member = tar.next()
            fh = tar.extractfile(member) if member is not None else None
            manifest = json.loads(fh.read() if fh else b"{}")
        validate_manifest(manifest)
        return dict(manifest)
    except (OSError, tarfile.TarError, ValueError, KeyError, TypeError) as e:
        raise PushError(f"{bundle}: not a bundle ({e})") from None


def trial_outcome(st: dict[str, Any], bundle_id: str) -> str | None:
    """committed / rolled_back once the robot has decided about `bundle_id`, else None."""
    active = (st.get("active") or {}).get("bundle_id")
    error = st.get("last_error") or {}
    if st.get("phase") == "committed" and active == bundle_id:
        return "committed"
    if st.get("phase") in ("rolled_back", "idle", "committed") and \
            error.get("bundle_id") == bundle_id:
        return "rolled_back"
    return None


def push(bundle: Path, which: str, *, url: str = "", timeout: float = 300.0,
         log: Log = print) -> dict[str, Any]:
    """Upload `bundle` to a paired robot and follow its trial to the end."""
    bundle_id = str(manifest_of(bundle)["bundle_id"])
    robot = resolve(which, url)
    who = robot["name"] or robot["id"]
    states: list[dict[str, Any]] = []
    with pinned_client(robot["url"], robot["fingerprint"], robot["token"]) as c:
        with open(bundle, "rb") as fh:
            r = c.post(f"{API}/ota", content=fh, headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(Path(bundle).stat().st_size)})
        if r.status_code != 200:
            raise PushError(f"{robot['url']} refused {bundle_id}: HTTP {r.status_code}: "
                            f"{_detail(r)}")
        log(f"uploaded {bundle_id} to {who}")
        deadline, last, outcome = time.monotonic() + timeout, None, None
        while outcome is None:
            if time.monotonic() > deadline:
                raise PushError(f"the trial of {bundle_id} on {who} did not end in "
                                f"{timeout:.0f} s (last phase {last})")
            st = c.get(f"{API}/ota").json()
            if st.get("seq") != last:
                last = st.get("seq")
                err = st.get("last_error") or {}
                states.append({"t": time.time(), "phase": st.get("phase"),
                               "error": err.get("reason")})
                log(f"  {who}: {st.get('phase')}"
                    + (f" ({err.get('reason')}: {err.get('detail', '')})" if err else ""))
            outcome = trial_outcome(st, bundle_id)
            if outcome is None:
                time.sleep(0.5)
    return {"robot": robot["id"], "url": robot["url"], "bundle_id": bundle_id,
            "final": outcome, "states": states, "committed": outcome == "committed"}
