"""One HTTP route per command of the service's command table (`brain.commands`).

Each command that declares `http=(METHOD, PATH)` becomes that route under /api/v1: path
parameters (`{id}`) and the body (or, for GET, the query string) are the command's arguments,
the paired client is the caller, and a `CommandError` becomes its 4xx (app.py). The command's
own argument model documents the route in the OpenAPI schema. Nothing about a command is
written here: a new command appears on the API by declaring its binding where it is defined.
"""

from __future__ import annotations

import copy
import inspect
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import create_model
from pydantic.fields import FieldInfo
from pydantic.types import Strict

from brain.api.auth import require_client
from brain.commands import ERRORS, Caller, Command, CommandTable

_PATH_PARAM = re.compile(r"{(\w+)}")


def command_router(table: CommandTable) -> APIRouter:
    router = APIRouter()
    for cmd in table:
        if cmd.http is None:
            continue
        method, path = cmd.http
        responses: dict[int | str, dict[str, Any]] = {
            401: {"description": "Not paired"},
            **{e.http_status: {"description": e.__doc__ or e.kind} for e in ERRORS.values()}}
        router.add_api_route(path, _endpoint(table, cmd), methods=[method], name=cmd.name,
                             summary=cmd.summary, responses=responses,
                             tags=[cmd.name.split(".")[0]])
    return router


def _from_text(f: FieldInfo) -> FieldInfo:
    """A command's field for a query string. Strict fields refuse `"true"` for a bool and
    `"5"` for a number, and every query value is text, so strictness goes; every limit stays
    (ranges, NaN/Inf refused, unknown keys). The command validates the parsed values again
    with its own strict model."""
    lax = copy.copy(f)
    lax.metadata = [m for m in f.metadata if not isinstance(m, Strict)]
    return lax


def _endpoint(table: CommandTable, cmd: Command) -> Any:
    assert cmd.http is not None
    method, path = cmd.http
    path_names = _PATH_PARAM.findall(path)
    body_fields = {n: f for n, f in cmd.args.model_fields.items() if n not in path_names}
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("request", kw, annotation=Request),
              inspect.Parameter("client", kw, annotation=str, default=Depends(require_client))]
    params += [inspect.Parameter(n, kw, annotation=Annotated[str, Path(max_length=255)])
               for n in path_names]
    if body_fields:
        optional = all(not f.is_required() for f in body_fields.values())
        model: Any = cmd.args
        if method == "GET":  # the query string holds all but the path's fields, as text
            fields: dict[str, Any] = {n: (f.annotation, _from_text(f))
                                      for n, f in body_fields.items()}
            model = create_model(f"{cmd.args.__name__}Query", __config__=cmd.args.model_config,
                                 **fields)
        annotation: Any = Annotated[model, Query()] if method == "GET" else cmd.args
        if optional and method != "GET":
            annotation = cmd.args | None
        params.append(inspect.Parameter("args", kw, annotation=annotation,
                                        **({"default": None} if optional else {})))

    async def endpoint(**values: Any) -> Any:
        values.pop("request")
        caller = Caller("api", values.pop("client"))
        args = values.pop("args", None)
        raw = args.model_dump() if args is not None else {}
        raw.update(values)  # path parameters
        if cmd.blocking:
            return await run_in_threadpool(table.call, cmd.name, raw, caller)
        return table.call(cmd.name, raw, caller)

    endpoint.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    endpoint.__name__ = cmd.name.replace(".", "_")
    endpoint.__doc__ = inspect.getdoc(cmd.run)
    return endpoint
