"""KL to the base (``kl_to_base: {beta, direction, on}``): the KL between the tuned model's and a frozen copy of
the starting model's next-token distributions, added to the loss. The penalty is
``sftlab.train.regularizers.KLToBase``; its frozen copy is taken here, before any hook is attached."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from sftlab.errors import UserError
from sftlab.settings import StrictModel
from sftlab.train.remedies.base import Attached, Remedy, RemedyContext


class KLToBaseSettings(StrictModel):
    """KL between the tuned and the frozen base next-token distributions."""

    beta: float = Field(0.1, ge=0)
    direction: Literal["forward", "reverse"] = "forward"
    on: Literal["response", "replay", "all"] = "response"

    @model_validator(mode="before")
    @classmethod
    def _yaml_on_key(cls, data: Any) -> Any:
        # YAML 1.1 (PyYAML) reads an unquoted `on:` key as the boolean True.
        if isinstance(data, dict) and True in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data


def build(ctx: RemedyContext) -> Attached:
    """KLToBase on a frozen copy of the model as it starts training."""
    from sftlab.train.regularizers import KLToBase

    kl = ctx.cfg.kl_to_base
    if kl.on == "replay" and ctx.cfg.replay is None:
        raise UserError("kl_to_base.on: replay needs a replay corpus: set replay.corpus (or use on: response)")
    assert ctx.trainer is not None
    return Attached(penalty=KLToBase(ctx.trainer.model, kl.beta, kl.direction, kl.on, pad_token_id=ctx.pad_token_id))


REMEDY = Remedy(
    key="kl_to_base",
    stage="after_trainer",
    summary="KL to the base: beta * KL between the frozen base's and the tuned model's next-token distributions",
    fields={"kl_to_base": (KLToBaseSettings | None, None)},
    active=lambda cfg: cfg.kl_to_base is not None,
    describe=lambda cfg: (f"KL-to-base beta {cfg.kl_to_base.beta} "
                          f"({cfg.kl_to_base.direction}, on {cfg.kl_to_base.on})"),
    build=build,
)
