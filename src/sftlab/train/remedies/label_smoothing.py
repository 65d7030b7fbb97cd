"""Label smoothing (Szegedy et al. 2016): cross-entropy against (1 - eps) * onehot + eps / V
(``loss: label_smoothing`` with ``label_smoothing_factor: eps``, transformers' name)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from sftlab.train.remedies.base import Remedy, RemedyContext

if TYPE_CHECKING:
    from sftlab.config import TrainConfig
    from sftlab.train.losses import LossFn


def build(ctx: RemedyContext) -> LossFn:
    """Cross-entropy smoothed by ``label_smoothing_factor``."""
    from sftlab.train.losses import cross_entropy

    eps = ctx.cfg.label_smoothing_factor
    return lambda logits, labels, n=None: cross_entropy(logits, labels, n, label_smoothing=eps)


def check(cfg: TrainConfig) -> None:
    """A smoothing factor of 0 would silently train plain cross-entropy."""
    if cfg.loss == "label_smoothing" and cfg.label_smoothing_factor == 0:
        raise ValueError("loss: label_smoothing needs label_smoothing_factor > 0")


REMEDY = Remedy(
    key="label_smoothing",
    loss="label_smoothing",
    stage="before_trainer",
    summary="label smoothing: spreads eps of each target's mass evenly over the vocabulary",
    fields={"label_smoothing_factor": (float, Field(0.0, ge=0, lt=1))},
    describe=lambda cfg: f"label smoothing {cfg.label_smoothing_factor}",
    build=build,
    check=check,
)
