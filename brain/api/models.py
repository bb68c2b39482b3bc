"""Request bodies of the routes that are not commands (the commands' arguments are defined
with the commands, in brain.service)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PairRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(pattern=r"^[0-9]{6}$", description="The 6-digit code from `brain pair`.")
    client_name: str = Field(pattern=r"^[^\x00-\x1f\x7f]{1,64}$",
                             description="A name for this client, shown by `brain pair --list`.")
