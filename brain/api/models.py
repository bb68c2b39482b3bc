"""Request bodies of the HTTP API, with the bounds that make malformed input a 4xx."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

EpisodeId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")]
ModeCommand = Literal["idle", "manual", "arm", "drive", "estop", "reset"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PairRequest(_Strict):
    code: str = Field(pattern=r"^[0-9]{6}$", description="The 6-digit code from `brain pair`.")
    client_name: str = Field(pattern=r"^[^\x00-\x1f\x7f]{1,64}$",
                             description="A name for this client, shown by `brain pair --list`.")


class ModeRequest(_Strict):
    mode: ModeCommand


class TeleopMessage(_Strict):
    """One WebSocket teleop message (JSON text frame)."""

    steering: float = Field(ge=-1.0, le=1.0, allow_inf_nan=False)
    throttle: float = Field(ge=-1.0, le=1.0, allow_inf_nan=False)


class EpisodeStartRequest(_Strict):
    operator: str = Field(default="", max_length=64, pattern=r"^[^\x00-\x1f\x7f]*$")
    language_instruction: str = Field(default="", max_length=512,
                                      pattern=r"^[^\x00-\x08\x0b-\x1f\x7f]*$")


class ExportRequest(_Strict):
    ids: list[EpisodeId] = Field(default_factory=list, max_length=10_000,
                                 description="Episodes to export; empty = all.")
    anonymize: bool = Field(default=True, description="Strip operator names from the export.")
