"""Anonymisation of episode metadata before it leaves the robot.

Operator identity, hostnames, IP and MAC addresses and serial numbers are replaced by a salted
hash (stable within one export, so episodes by the same operator still group together; the salt
is not written anywhere) or removed, including when they appear inside free text. Returns what
was touched so the export manifest can list it. Written by hand: no maintained library targets
this small, metadata-only case (scrubbers like presidio need NLP models).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

# Keys whose whole value identifies a person or a machine.
_IDENTITY_KEYS = re.compile(
    r"(operator|user(name)?|owner|author|email|host(name)?|node|machine_id|serial|"
    r"serial_number|device_id|mac|ip|ip_address|address)$", re.I)
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("mac", re.compile(r"\b[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}\b")),
    ("ipv4", re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")),
    ("ipv6", re.compile(r"\b(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{1,4}\b")),
    ("email", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")),
    ("serial", re.compile(r"\b(?:serial|s/n|sn)[\s:=#]*[A-Za-z0-9-]{4,}\b", re.I)),
    ("hostname", re.compile(r"\b[A-Za-z0-9-]+\.(?:local|lan|home|internal)\b", re.I)),
)


class Anonymizer:
    def __init__(self, salt: bytes) -> None:
        self._salt = salt
        self.touched: list[dict[str, str]] = []

    def token(self, value: str) -> str:
        return "anon-" + hashlib.sha256(self._salt + value.encode()).hexdigest()[:12]

    def scrub(self, obj: Any, where: str = "") -> Any:
        """A scrubbed copy of a JSON-like value; `where` names it in the report."""
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                path = f"{where}.{k}" if where else str(k)
                if _IDENTITY_KEYS.search(str(k)) and isinstance(v, (str, int)) and v != "":
                    out[k] = self.token(str(v))
                    self.touched.append({"field": path, "action": "hashed"})
                else:
                    out[k] = self.scrub(v, path)
            return out
        if isinstance(obj, list):
            return [self.scrub(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if isinstance(obj, str):
            return self._scrub_text(obj, where)
        return obj

    def _scrub_text(self, text: str, where: str) -> str:
        for kind, pat in _PATTERNS:
            text, n = pat.subn(lambda m: self.token(m.group(0)), text)
            if n:
                self.touched.append({"field": where, "action": f"hashed {n} {kind} in text"})
        return text
