"""EAFT, entropy-adaptive fine-tuning (Diao et al. 2026, arXiv 2601.02151): ``loss: eaft`` with
``eaft: {alpha, k, entropy_norm}``.

Each target token's cross-entropy is weighted by the model's own top-k entropy at that position, normalised and
raised to ``alpha`` (detached). The names follow Axolotl's ``eaft_alpha`` / ``eaft_k`` (LLaMA-Factory:
``use_eaft_loss`` with ``eaft_alpha``); the defaults are the official code's. The formula, and where
LLaMA-Factory and Axolotl differ, is ``sftlab.train.losses.eaft_loss``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from sftlab.settings import StrictModel
from sftlab.train.remedies.base import Remedy, RemedyContext

if TYPE_CHECKING:
    from sftlab.config import TrainConfig
    from sftlab.train.losses import LossFn


class EaftSettings(StrictModel):
    """EAFT loss (Diao et al. 2026)."""

    alpha: float = Field(1.0, ge=0, description="the weight is (normalised entropy) ^ alpha; 0 is cross-entropy")
    k: int = Field(20, ge=2, description="the entropy is taken over the k largest logits (capped at the vocabulary)")
    entropy_norm: float | None = Field(
        3.0, gt=0, description="the top-k entropy is divided by this: 3.0 as the official code (about ln 20); "
        "null: ln k, the paper's H / ln K (Axolotl's current form)"
    )


def build(ctx: RemedyContext) -> LossFn:
    """EAFT with the config's ``alpha``, ``k`` and ``entropy_norm``."""
    from sftlab.train.losses import eaft_loss

    s = ctx.cfg.eaft
    return lambda logits, labels, n=None: eaft_loss(logits, labels, n, alpha=s.alpha, k=s.k,
                                                    entropy_norm=s.entropy_norm)


def describe(cfg: TrainConfig) -> str:
    """Alpha, k and the normaliser."""
    norm = "ln k" if cfg.eaft.entropy_norm is None else f"{cfg.eaft.entropy_norm:g}"
    return f"loss eaft (cross-entropy x (top-{cfg.eaft.k} entropy / {norm}) ^ {cfg.eaft.alpha:g}, detached)"


REMEDY = Remedy(
    key="eaft",
    loss="eaft",
    stage="before_trainer",
    summary="EAFT: each target's cross-entropy weighted by the model's own normalised top-k entropy there",
    fields={"eaft": (EaftSettings, Field(default_factory=EaftSettings))},
    describe=describe,
    build=build,
)
