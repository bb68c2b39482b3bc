"""The manifest schema (ota/edge_manifest.schema.json, the single source of truth), applied with
the `jsonschema` package."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("edge_manifest.schema.json")  # -> ota/ in a checkout


class SchemaError(ValueError):
    """The manifest does not follow the schema; the message names the first place."""


@functools.cache
def _validator() -> Any:
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validate_manifest(doc: Any) -> None:
    errors = sorted(_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(top)"
        raise SchemaError(f"{where}: {e.message}"[:300])
