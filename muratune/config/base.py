"""The base of every config model: strict pydantic (unknown keys are errors), validated on assignment."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
