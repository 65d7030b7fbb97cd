"""Dithered bf16 weight rounding (``bf16_weight_rounding``, a precision key of TrainConfig): a bf16 step's
forward reads each trained linear weight rounded with a fixed random threshold, so that updates smaller than
half a bf16 step still show (``sftlab.train.weight_rounding``).

A ``before_compile`` step: after the method (its trainable weights are the ones that move) and every hook, and
before ``torch_compile``, whose blocks' graphs read whatever tensor each parameter points at.
"""

from __future__ import annotations

from sftlab.train.remedies.base import Attached, Remedy, RemedyContext


def build(ctx: RemedyContext) -> Attached:
    """The dither over the trainable linear weights, when this run resolved to dithered rounding."""
    from sftlab.train.regularizers import Anchor
    from sftlab.train.weight_rounding import DitheredBf16, dithered_weights

    if ctx.weight_rounding != "dithered":
        return Attached()
    assert ctx.trainer is not None
    dither = DitheredBf16(dithered_weights(ctx.trainer.model), ctx.cfg.seed)
    for regularizer in ctx.trainer.regularizers:
        if isinstance(getattr(regularizer, "anchor", None), Anchor):
            regularizer.anchor.rounding = dither  # L2-SP / EWC measure the fp32 masters, not the dithered view
    return Attached(weight_dither=dither)


REMEDY = Remedy(
    key="bf16_weight_rounding",
    stage="before_compile",
    summary="dithered bf16 weights: an unbiased rounding of the fp32 masters in each bf16 forward",
    active=lambda cfg: cfg.bf16_weight_rounding != "nearest",
    describe=lambda cfg: None,  # the setup table's precision row shows it
    build=build,
)
