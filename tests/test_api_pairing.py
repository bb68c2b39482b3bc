"""Pairing codes, tokens stored as hashes, lockout, revocation and tickets (no network)."""

from __future__ import annotations

import json

import pytest

from brain.api.pairing import CodeRejected, LockedOut, Pairing, token_hash


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def test_code_is_six_digits_and_one_use(tmp_path):
    p = Pairing(tmp_path, 300)
    code = p.new_code()["code"]
    assert len(code) == 6 and code.isdigit()
    token = p.pair(code, "phone", "10.0.0.2")
    assert p.authenticate(token) == "phone"
    with pytest.raises(CodeRejected):
        p.pair(code, "other", "10.0.0.2")


def test_code_expires(tmp_path):
    clock = Clock()
    p = Pairing(tmp_path, 60, clock=clock)
    code = p.new_code()["code"]
    clock.t += 61
    with pytest.raises(CodeRejected):
        p.pair(code, "phone", "10.0.0.2")


def test_only_token_hash_is_stored_and_survives_restart(tmp_path):
    p = Pairing(tmp_path, 300)
    token = p.pair(p.new_code()["code"], "phone", "10.0.0.2")
    raw = (tmp_path / "clients.json").read_text()
    assert token not in raw and token_hash(token) in raw
    assert (tmp_path / "clients.json").stat().st_mode & 0o777 == 0o600
    assert Pairing(tmp_path, 300).authenticate(token) == "phone"
    assert Pairing(tmp_path, 300).authenticate(token + "x") is None


def test_lockout_after_failures_even_with_right_code(tmp_path):
    clock = Clock()
    p = Pairing(tmp_path, 300, clock=clock, failures_before_lockout=3, lockout_s=30)
    code = p.new_code()["code"]
    for _ in range(3):
        with pytest.raises(CodeRejected):
            p.pair(wrong(code), "x", "10.0.0.9")
    with pytest.raises(LockedOut) as e:
        p.pair(code, "x", "10.0.0.9")
    assert 0 < e.value.retry_after_s <= 30
    # another address is not locked out, and the lockout ends
    clock.t += 31
    assert p.authenticate(p.pair(code, "x", "10.0.0.9")) == "x"


def test_lockout_doubles(tmp_path):
    clock = Clock()
    p = Pairing(tmp_path, 3600, clock=clock, failures_before_lockout=1, lockout_s=10,
                failures_per_code=100)
    code = p.new_code()["code"]
    with pytest.raises(CodeRejected):
        p.pair(wrong(code), "x", "a")
    clock.t += 11
    with pytest.raises(CodeRejected):
        p.pair(wrong(code), "x", "a")
    with pytest.raises(LockedOut) as e:
        p.pair(code, "x", "a")
    assert e.value.retry_after_s > 10


def test_code_burned_after_many_failures_across_addresses(tmp_path):
    p = Pairing(tmp_path, 300, failures_per_code=4)
    code = p.new_code()["code"]
    for i in range(4):
        with pytest.raises(CodeRejected):
            p.pair(wrong(code), "x", f"10.0.0.{i}")
    with pytest.raises(CodeRejected):
        p.pair(code, "x", "10.0.0.100")


def test_bad_client_name_changes_nothing(tmp_path):
    p = Pairing(tmp_path, 300)
    code = p.new_code()["code"]
    with pytest.raises(ValueError, match="client_name"):
        p.pair(code, "bad\nname", "1.2.3.4")
    assert p.authenticate(p.pair(code, "good", "1.2.3.4")) == "good"


def test_revoke_and_repair_replaces_token(tmp_path):
    p = Pairing(tmp_path, 300)
    t1 = p.pair(p.new_code()["code"], "phone", "a")
    t2 = p.pair(p.new_code()["code"], "phone", "a")
    assert p.authenticate(t1) is None and p.authenticate(t2) == "phone"
    assert [c["name"] for c in p.list()] == ["phone"]
    with pytest.raises(KeyError, match="nobody"):
        p.revoke("nobody")
    p.revoke("phone")
    assert p.authenticate(t2) is None and p.list() == []
    assert json.loads((tmp_path / "clients.json").read_text())["clients"] == {}


def test_tickets_expire_are_signed_and_die_with_revocation(tmp_path):
    clock = Clock()
    p = Pairing(tmp_path, 300, clock=clock, ticket_ttl_s=60)
    p.pair(p.new_code()["code"], "phone", "a")
    t = p.issue_ticket("phone")["ticket"]
    assert p.check_ticket(t) == "phone"
    body, _, sig = t.partition(".")
    assert p.check_ticket(body + "." + sig[::-1]) is None
    assert p.check_ticket("garbage") is None and p.check_ticket("") is None
    assert Pairing(tmp_path, 300, clock=clock).check_ticket(t) is None  # other secret
    clock.t += 61
    assert p.check_ticket(t) is None
    clock.t -= 61
    p.revoke("phone")
    assert p.check_ticket(t) is None
