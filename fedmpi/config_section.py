"""The base of every config section: unknown keys are errors, values are frozen, defaults validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """One section of the config tree (``fedmpi.config.Config`` and everything under it)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
