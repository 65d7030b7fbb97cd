"""Plain SFT: next-token cross-entropy over the target tokens (``loss: cross_entropy``, the default)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sftlab.train.remedies.base import Remedy, RemedyContext

if TYPE_CHECKING:
    from sftlab.train.losses import LossFn


def build(ctx: RemedyContext) -> LossFn:
    """``sftlab.train.losses.cross_entropy``."""
    from sftlab.train.losses import cross_entropy

    return cross_entropy


REMEDY = Remedy(
    key="cross_entropy",
    loss="cross_entropy",
    stage="before_trainer",
    summary="next-token cross-entropy on the target tokens: plain SFT, the baseline every remedy is measured against",
    describe=lambda cfg: None,
    build=build,
)
