"""L2-SP (Li et al. 2018): an L2 penalty pulling the trainable weights towards their starting point
(``l2sp: {lambda}``). The penalty is ``sftlab.train.regularizers.L2SP``."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from sftlab.settings import StrictModel
from sftlab.train.remedies.base import Attached, Remedy, RemedyContext


class L2SPSettings(StrictModel):
    """L2 penalty towards the starting point."""

    lambda_: float = Field(0.01, alias="lambda", ge=0)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def build(ctx: RemedyContext) -> Attached:
    """L2-SP on the shared anchor (the weights as training starts)."""
    from sftlab.train.regularizers import L2SP

    return Attached(penalty=L2SP(ctx.anchor(), ctx.cfg.l2sp.lambda_))


REMEDY = Remedy(
    key="l2sp",
    stage="after_trainer",
    summary="L2-SP: (lambda/2) * ||theta - theta_0||^2 over the trainable weights",
    fields={"l2sp": (L2SPSettings | None, None)},
    active=lambda cfg: cfg.l2sp is not None,
    describe=lambda cfg: f"L2-SP lambda {cfg.l2sp.lambda_}",
    build=build,
)
