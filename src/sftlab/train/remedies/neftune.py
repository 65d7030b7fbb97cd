"""NEFTune (Jain et al. 2023): uniform noise on the input embeddings while training
(``neftune_noise_alpha``, transformers' name; ``neftune_noise_type``, ``neftune_schedule``, ``neftune_layers``).

The hook is sftlab's own (``sftlab.train.neftune``), never transformers': transformers' scales by the padded
batch length, noises padding and treats a packed row as one sequence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from sftlab.errors import UserError
from sftlab.train.remedies.base import Attached, Remedy, RemedyContext

if TYPE_CHECKING:
    from sftlab.config import TrainConfig


def build(ctx: RemedyContext) -> Attached:
    """NEFTune's hook on the trainer's model, with its progress callback and logged alpha."""
    from sftlab.train.neftune import NEFTuneProgressCallback, attach_neftune

    cfg = ctx.cfg
    assert ctx.trainer is not None
    try:
        hook = attach_neftune(ctx.trainer.model, cfg.neftune_noise_alpha, cfg.neftune_noise_type, cfg.neftune_schedule,
                              pad_token_id=ctx.pad_token_id, layers=tuple(cfg.neftune_layers))
    except ValueError as exc:  # a layer this model does not have
        raise UserError(str(exc)) from None
    return Attached(callback=NEFTuneProgressCallback(hook), log_values=hook.log_values)


def check(cfg: TrainConfig) -> None:
    """Noise on a block's output is a hook inside that block's compiled graph, where inductor fails to build it."""
    if cfg.torch_compile and cfg.neftune_noise_alpha is not None and cfg.neftune_layers != [0]:
        raise ValueError("torch_compile takes NEFTune on the input embeddings only (neftune_layers: [0])")


def describe(cfg: TrainConfig) -> str:
    """Alpha, noise type, schedule, and the hidden states noised when not only the embeddings."""
    layers = "" if cfg.neftune_layers == [0] else f", hidden states {cfg.neftune_layers}"
    return f"NEFTune alpha {cfg.neftune_noise_alpha} ({cfg.neftune_noise_type}, {cfg.neftune_schedule}{layers})"


REMEDY = Remedy(
    key="neftune",
    stage="after_trainer",
    summary="NEFTune: alpha / sqrt(L * d) * U(-1, 1) noise on the input embeddings of real tokens while training",
    fields={
        "neftune_noise_alpha": (float | None, Field(None, gt=0)),
        "neftune_noise_type": (Literal["uniform", "gaussian", "laplace"], Field(
            "uniform", description="all three scaled to the uniform's per-element variance (see sftlab.train.neftune)"
        )),
        "neftune_schedule": (Literal["constant", "linear_decay"], "constant"),
        "neftune_layers": (list[Annotated[int, Field(ge=0)]], Field(
            default_factory=lambda: [0], min_length=1,
            description="hidden states that get the noise: 0 the input embeddings, k the output of block k",
        )),
    },
    active=lambda cfg: cfg.neftune_noise_alpha is not None,
    describe=describe,
    build=build,
    check=check,
)
