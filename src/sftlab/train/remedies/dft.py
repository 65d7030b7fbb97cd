"""DFT, dynamic fine-tuning (Wu et al. 2025, arXiv 2508.05629): ``loss: dft``, TRL's ``loss_type="dft"``.

The formula is ``sftlab.train.losses.dft_loss``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sftlab.train.remedies.base import Remedy, RemedyContext

if TYPE_CHECKING:
    from sftlab.train.losses import LossFn


def build(ctx: RemedyContext) -> LossFn:
    """``sftlab.train.losses.dft_loss``."""
    from sftlab.train.losses import dft_loss

    return dft_loss


REMEDY = Remedy(
    key="dft",
    loss="dft",
    stage="before_trainer",
    summary="DFT: each target token's cross-entropy weighted by its own detached probability",
    describe=lambda cfg: "loss dft (cross-entropy weighted by each target's own probability)",
    build=build,
)
