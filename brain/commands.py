"""The command surface: every command the robot takes, defined once, whatever the transport.

A command is a method of the service object (`brain.service.RobotService`) marked with
`@command`: its name (`"mode"`, `"episodes.start"`), a pydantic model for its arguments, and how
the HTTP API exposes it (`http=("POST", "/mode")`, or None for the local control socket only).
The transports are thin: the control socket (`brain.control_socket`) looks the name up and
calls `CommandTable.call`; the API (`brain.api.routes_commands`) makes one route per command
with an HTTP binding and calls the same. Arguments are validated here, refusals are
`CommandError`s with a kind that each transport maps to its own form (an error reply on the
socket, a 4xx over HTTP), so a command answers the same through both.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class CommandError(Exception):
    """A command was refused; the message says why and is safe to show to the caller.
    `fields` go into the answer beside the message (e.g. a bundle's refusal `reason`)."""

    kind = "invalid"
    http_status = 400

    def __init__(self, message: str = "", **fields: Any) -> None:
        super().__init__(message)
        self.fields = fields


class Invalid(CommandError):
    """The arguments are malformed or out of range."""

    kind, http_status = "invalid", 422


class Refused(CommandError):
    """Not allowed in the current state (mode, recorder, latch)."""

    kind, http_status = "refused", 409


class NotFound(CommandError):
    kind, http_status = "not_found", 404


class Forbidden(CommandError):
    """The caller may not do this (e.g. a remote reset of a locally latched e-stop)."""

    kind, http_status = "forbidden", 403


class Unavailable(CommandError):
    """The part that would do it is not running or not ready."""

    kind, http_status = "unavailable", 503


class InsufficientStorage(CommandError):
    kind, http_status = "insufficient_storage", 507


class Rejected(CommandError):
    """Content that failed verification (a bundle): `reason` names the check."""

    kind, http_status = "rejected", 422


ERRORS: dict[str, type[CommandError]] = {
    c.kind: c for c in (Invalid, Refused, NotFound, Forbidden, Unavailable, InsufficientStorage,
                        Rejected)}


@dataclass(frozen=True)
class Caller:
    """Who sent a command: the local control socket (its file permissions are the auth) or a
    paired API client."""

    transport: str  # "socket" or "api"
    client: str = "local"

    @property
    def remote(self) -> bool:
        return self.transport != "socket"

    def __str__(self) -> str:
        return "local" if not self.remote else f"api:{self.client}"

    def describe(self) -> str:
        """For people: who asked (e.g. the default reason of an e-stop)."""
        return ("requested on the robot (control socket)" if not self.remote
                else f"requested by API client {self.client!r}")


LOCAL = Caller("socket")


class Args(BaseModel):
    """Base of every command's arguments: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class NoArgs(Args):
    pass


@dataclass(frozen=True)
class Command:
    name: str
    run: Callable[[Any, Caller], Any]  # bound method: (args model, caller) -> JSON-able result
    args: type[Args]
    http: tuple[str, str] | None  # (method, path under /api/v1) or None: control socket only
    blocking: bool  # seconds of work: the API runs it on a worker thread
    summary: str


def command(name: str, *, args: type[Args] = NoArgs, http: tuple[str, str] | None = None,
            blocking: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a service method `(self, args, caller)` as the command `name`."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__command__ = (name, args, http, blocking)  # type: ignore[attr-defined]
        return fn

    return mark


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "arguments"
    return f"{where}: {err.get('msg', 'invalid')}"


class CommandTable:
    """The commands of one service object, by name."""

    def __init__(self, service: object) -> None:
        self.commands: dict[str, Command] = {}
        for _, method in inspect.getmembers(service, inspect.ismethod):
            mark = getattr(method, "__command__", None)
            if mark is None:
                continue
            name, args, http, blocking = mark
            doc = inspect.getdoc(method) or name
            self.commands[name] = Command(name, method, args, http, blocking,
                                          doc.splitlines()[0])

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.commands.values())

    def get(self, name: str) -> Command:
        cmd = self.commands.get(name)
        if cmd is None:
            raise NotFound(f"unknown command {name!r}")
        return cmd

    def parse(self, name: str, raw: Any) -> Args:
        cmd = self.get(name)
        if raw is None:
            raw = {}
        if isinstance(raw, Args):
            return raw
        if not isinstance(raw, dict):
            raise Invalid(f"{name}: arguments must be an object")
        try:
            return cmd.args.model_validate(raw)
        except ValidationError as e:
            raise Invalid(f"{name}: {_first_error(e)}") from None

    def call(self, name: str, raw: Any, caller: Caller) -> Any:
        """Validate and run; raises CommandError (every expected failure) or a bug."""
        cmd = self.get(name)
        return cmd.run(self.parse(name, raw), caller)
