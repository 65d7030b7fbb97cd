"""Data augmentation against collapse (``augment: {eda, template_variety}``): EDA-style word edits on the
instruction and varied prompt templates, drawn afresh each epoch (``sftlab.data.augment``).

It has no builder: the training dataset reads these settings and applies them record by record
(``sftlab.data.dataset.SFTDataset``), since each epoch draws new edits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from sftlab.settings import StrictModel
from sftlab.train.remedies.base import Remedy

if TYPE_CHECKING:
    from sftlab.config import TrainConfig


class EdaSettings(StrictModel):
    """EDA-style word edits on the instruction (never the response)."""

    p: float = Field(0.1, ge=0, le=1)
    n: int = Field(1, ge=1)


class AugmentSettings(StrictModel):
    """Data augmentation against collapse."""

    eda: EdaSettings | None = None
    template_variety: bool = False


def describe(cfg: TrainConfig) -> str:
    """Which augmentations are on."""
    eda = f"EDA p {cfg.augment.eda.p} x{cfg.augment.eda.n}" if cfg.augment.eda else None
    return "augment: " + ", ".join(p for p in (eda, "varied templates" if cfg.augment.template_variety else None) if p)


REMEDY = Remedy(
    key="augment",
    stage="data",
    summary="augmentation: EDA word edits on instructions and varied prompt templates, new each epoch",
    fields={"augment": (AugmentSettings | None, None)},
    active=lambda cfg: cfg.augment is not None and (cfg.augment.eda is not None or cfg.augment.template_variety),
    describe=describe,
)
