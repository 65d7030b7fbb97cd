"""The base of every config section, and the settings more than one config shares.

Kept apart from :mod:`sftlab.config` so that a remedy's own settings (``sftlab.train.remedies``) can build on
them while ``config.py`` composes the remedies into ``TrainConfig``: neither imports the other's module.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class SamplingSettings(StrictModel):
    """How the audit samples from each model."""

    num_samples: int = Field(16, ge=1, description="K samples per prompt")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = off")
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(32, ge=1)
    seed: int = 0


def _fields_at(cls: type[StrictModel], loc: tuple[Any, ...]) -> list[str]:
    """Valid key names of the (possibly nested) section at ``loc``."""
    model: Any = cls
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            field = next((f for f in model.model_fields.values() if f.alias == part), None)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return [f.alias or name for name, f in model.model_fields.items()]


def format_validation_error(exc: ValidationError, cls: type[StrictModel], source: str) -> str:
    """One line per problem, each naming the key; unknown keys get the closest valid key."""
    lines = [f"{source}: invalid {cls.__name__}:"]
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not isinstance(p, int))
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            valid = _fields_at(cls, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
            lines.append(f"  - unknown key {where!r}{hint}")
        elif err["type"] == "missing":
            lines.append(f"  - {where}: required key is missing")
        else:
            lines.append(f"  - {where}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)
