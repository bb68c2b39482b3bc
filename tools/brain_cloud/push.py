"""Pairing with robots and pushing bundles to them (`brain-cloud pair`, `brain-cloud push`).

A robot's certificate is self-signed: it is pinned, never checked against a CA. The pin is the
SHA-256 fingerprint the owner reads on the robot itself (`brain pair` prints it beside the
code) and gives as `--fingerprint` (all 64 hex digits, or at least the first 16); the served
certificate must match it, and the pairing reply must name the same one. Nothing read off the
LAN is believed for it: an mDNS record (its `fp` and `tls` TXT fields included) can be
advertised by any host.

After pairing, the robot's token goes to nothing but a TLS connection presenting the pinned
certificate: an SSL context whose only trust anchor is that certificate (partial chains
allowed), the fingerprint checked first. mDNS only supplies an address, always reached over
HTTPS, and every record carrying the robot's id is tried until one presents the pin. Plain HTTP
is for a robot on this machine's loopback with TLS off, and only with `--allow-plain-http`.

Paired robots live in `~/.config/brain-cloud/robots.json` (mode 0600): id, name, last URL,
token, fingerprint. A push uploads the bundle (POST /api/v1/ota), then follows GET /api/v1/ota
and prints each state until the trial ends: committed, or rolled back with the reason.
"""

from __future__ import annotations

import hashlib
import ipaddress
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


def find_robots(which: str, timeout: float = 3.0) -> list[dict[str, Any]]:
    """Every mDNS record on the LAN for a robot id, name or instance: addresses to try, none
    of them trusted (anyone can advertise any id)."""
    from brain.api.discovery import discover

    found = discover(timeout=timeout)
    match = [r for r in found if which in (r["id"], r["name"], r["instance"])]
    if not match:
        seen = ", ".join(f"{r['name']} ({r['id']})" for r in found) or "none"
        raise PushError(f"no robot {which!r} answered over mDNS in {timeout:.0f} s (seen: "
                        f"{seen}); give --url")
    return match


def https_url(robot: dict[str, Any]) -> str:
    """The address an mDNS record gives, over HTTPS whatever its `tls` field says."""
    return f"https://{robot['host']}:{robot['port']}"


def server_certificate(url: str) -> tuple[str, str]:
    """(SHA-256 fingerprint, PEM) of the certificate the server at `url` presents."""
    parts = urlsplit(url)
    pem = ssl.get_server_certificate((parts.hostname or "", parts.port or 443), timeout=10)
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest(), pem


def is_loopback(url: str) -> bool:
    try:
        return ipaddress.ip_address(urlsplit(url).hostname or "").is_loopback
    except ValueError:
        return urlsplit(url).hostname == "localhost"


def pinned_client(url: str, fingerprint: str, token: str = "", *,
                  allow_plain_http: bool = False) -> httpx.Client:
    """An HTTP client for `url` that trusts only the certificate with `fingerprint`. Plain HTTP
    only to loopback, only when asked for, and never for a robot paired with a pin."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if not url.startswith("https://"):
        if fingerprint:
            raise PushError(f"{url}: this robot was paired with a pinned certificate; its "
                            "token goes over HTTPS to that certificate only")
        if not (allow_plain_http and is_loopback(url)):
            raise PushError(f"{url}: plain HTTP only to a robot on this machine's loopback, "
                            "with --allow-plain-http")
        return httpx.Client(base_url=url, headers=headers, timeout=60)
    if not fingerprint:
        raise PushError(f"{url}: no pinned certificate for this robot; pair it again with "
                        "--fingerprint")
    fp, pem = server_certificate(url)
    if fp != fingerprint.lower():
        raise PushError(f"{url} presents certificate {fp}, not the pinned {fingerprint}: a "
                        "different robot, a new certificate, or someone in between. Pair again "
                        "if the robot's certificate really changed")
    ctx = ssl.create_default_context(cadata=pem)
    ctx.check_hostname = False  # the pin identifies the robot, not a host name
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return httpx.Client(base_url=url, headers=headers, verify=ctx, timeout=60)


def pin_from_owner(url: str, given: str) -> str:
    """The full fingerprint to pin: the certificate `url` serves, when it matches what the
    owner read on the robot (`given`, 16 to 64 hex digits)."""
    given = given.strip().lower().replace(":", "")
    if not (16 <= len(given) <= 64 and all(c in "0123456789abcdef" for c in given)):
        raise PushError("--fingerprint: the TLS fingerprint `brain pair` prints on the robot "
                        "(64 hex digits, or at least the first 16)")
    served, _pem = server_certificate(url)
    if not served.startswith(given):
        raise PushError(f"{url} presents certificate {served}, not the {given} read on the "
                        "robot: not pairing (another host, or someone in between)")
    return served


def pair(which: str, code: str, *, url: str = "", fingerprint: str = "",
         client_name: str = "brain-cloud", allow_plain_http: bool = False,
         log: Log = print) -> dict[str, Any]:
    """Pair with the robot, pinning the certificate whose fingerprint the owner read on it."""
    candidates = [url] if url else [https_url(r) for r in find_robots(which)]
    if not candidates[0].startswith("https://"):
        url, pin = candidates[0], ""  # plain HTTP: pinned_client allows loopback only
    elif not fingerprint:
        raise PushError("give --fingerprint: the TLS fingerprint `brain pair` prints on the "
                        "robot beside the code (an mDNS record's can be forged)")
    else:
        url, pin = _first_presenting(candidates, fingerprint)
    with pinned_client(url, pin, allow_plain_http=allow_plain_http) as c:
        r = c.post(f"{API}/pair", json={"code": code, "client_name": client_name})
    if r.status_code != 200:
        raise PushError(f"pairing refused: HTTP {r.status_code}: {_detail(r)}")
    body = r.json()
    if pin and body.get("fingerprint") != pin:
        raise PushError("the robot's pairing reply names another certificate than the one "
                        "pinned; not pairing")
    entry = {"id": body["id"], "name": body.get("name", ""), "url": url,
             "token": body["token"], "fingerprint": pin, "paired": time.time()}
    save_robot(entry)
    log(f"paired with {entry['name'] or entry['id']} ({entry['id']}) at {url}")
    return {k: v for k, v in entry.items() if k != "token"}


def _first_presenting(urls: list[str], fingerprint: str) -> tuple[str, str]:
    """The first of `urls` whose certificate matches `fingerprint` (full or a prefix), with
    the full fingerprint; PushError naming each failure otherwise. No token is sent."""
    failures = []
    for url in urls:
        try:
            return url, pin_from_owner(url, fingerprint)
        except (PushError, OSError) as e:
            failures.append(f"{url}: {e}")
    raise PushError("no address presents the pinned certificate: " + "; ".join(failures))


def _detail(r: httpx.Response) -> str:
    try:
        return str(r.json().get("detail", r.text))
    except ValueError:
        return r.text[:300]


def resolve(which: str, url: str = "") -> dict[str, Any]:
    """A paired robot by id or name, with a URL: the one given, else the first address that
    mDNS gives for its id and that presents its pinned certificate, else the last known."""
    robots = load_robots()
    entry = robots.get(which) or next((r for r in robots.values() if r.get("name") == which),
                                      None)
    if entry is None:
        raise PushError(f"robot {which!r} is not paired here; run `brain-cloud pair {which} "
                        "--code CODE --fingerprint FP` with what `brain pair` shows on the "
                        "robot")
    entry = dict(entry)
    if url:
        entry["url"] = url
    elif entry.get("fingerprint"):
        try:
            candidates = [https_url(r) for r in find_robots(entry["id"], timeout=2.0)]
            entry["url"], _ = _first_presenting(candidates, entry["fingerprint"])
        except PushError:
            pass  # the last known URL, then (pinned_client checks it all the same)
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
         allow_plain_http: bool = False, log: Log = print) -> dict[str, Any]:
    """Upload `bundle` to a paired robot and follow its trial to the end."""
    bundle_id = str(manifest_of(bundle)["bundle_id"])
    robot = resolve(which, url)
    who = robot["name"] or robot["id"]
    states: list[dict[str, Any]] = []
    with pinned_client(robot["url"], robot.get("fingerprint", ""), robot["token"],
                       allow_plain_http=allow_plain_http) as c:
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
