"""The base of every config class: unknown keys are errors, assignments are validated.

A leaf module (pydantic only) so that the method and task option classes and the config tree
that holds them can all build on it without importing one another.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    # Unknown keys are errors: a typo in a YAML file must never be silently ignored. No float
    # anywhere may be inf or nan (`--train.lr inf` would only fail a step into training).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
