"""TOFU, tempered focal loss (Klypa & Cherednichenko 2026, arXiv 2605.00195): ``loss: tofu`` with
``tofu: {gamma, beta}``, aimed at the narrowing of generation breadth after SFT.

A detached focal weight on a temperature-sharpened cross-entropy; the defaults are the official code's
(github.com/rsklypa/TOFU). The formula is ``sftlab.train.losses.tofu_loss``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from sftlab.settings import StrictModel
from sftlab.train.remedies.base import Remedy, RemedyContext

if TYPE_CHECKING:
    from sftlab.train.losses import LossFn


class TofuSettings(StrictModel):
    """TOFU loss (Klypa & Cherednichenko 2026)."""

    # Below 1, (1 - p)^(gamma - 1) is infinite at p = 1 and the weight is not defined there.
    gamma: float = Field(3.0, ge=1, description="focal exponent: tokens the model finds likely pull less")
    beta: float = Field(0.8, gt=0, description="temperature of the softmax the gradient is taken through")


def build(ctx: RemedyContext) -> LossFn:
    """TOFU with the config's ``gamma`` and ``beta``."""
    from sftlab.train.losses import tofu_loss

    gamma, beta = ctx.cfg.tofu.gamma, ctx.cfg.tofu.beta
    return lambda logits, labels, n=None: tofu_loss(logits, labels, n, gamma=gamma, beta=beta)


REMEDY = Remedy(
    key="tofu",
    loss="tofu",
    stage="before_trainer",
    summary="TOFU: a detached focal weight on cross-entropy through a softmax at temperature beta",
    fields={"tofu": (TofuSettings, Field(default_factory=TofuSettings))},
    describe=lambda cfg: f"loss tofu (gamma {cfg.tofu.gamma:g}, beta {cfg.tofu.beta:g})",
    build=build,
)
