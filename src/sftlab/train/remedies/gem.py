"""GEM, entropic distribution matching (Li et al. 2024, arXiv 2408.16673): ``loss: gem`` with ``gem: {beta, h}``.

The formula is ``sftlab.train.losses.gem_loss``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from sftlab.settings import StrictModel
from sftlab.train.remedies.base import Remedy, RemedyContext

if TYPE_CHECKING:
    from sftlab.train.losses import LossFn


class GemSettings(StrictModel):
    """GEM loss (Li et al. 2024)."""

    beta: float = Field(0.7, gt=0, le=1)
    h: Literal["linear", "logsigmoid"] = "linear"


def build(ctx: RemedyContext) -> LossFn:
    """GEM with the config's ``beta`` and ``h``."""
    from sftlab.train.losses import gem_loss

    beta, h = ctx.cfg.gem.beta, ctx.cfg.gem.h
    return lambda logits, labels, n=None: gem_loss(logits, labels, n, beta=beta, h=h)


REMEDY = Remedy(
    key="gem",
    loss="gem",
    stage="before_trainer",
    summary="GEM: matches the target while a stop-gradient tempered softmax keeps the output entropy up",
    fields={"gem": (GemSettings, Field(default_factory=GemSettings))},
    describe=lambda cfg: f"loss gem (beta {cfg.gem.beta}, h {cfg.gem.h})",
    build=build,
)
