"""The settings of the sweep's post-hoc strategies: steps that train nothing and make a model from another
strategy's (WiSE-FT interpolation, intruder-dimension reduction, SafeLoRA). The steps themselves live in
``sftlab.train.interpolate``, ``sftlab.train.intruders`` and ``sftlab.train.safelora``; these models hold
only their keys (pydantic, no torch), so the configs can read them cheaply."""

from __future__ import annotations

from pydantic import Field

from sftlab.settings import StrictModel


class InterpolationSpec(StrictModel):
    """A WiSE-FT strategy: no training of its own, a weight mix of the base and another strategy's model."""

    source: str = Field(..., description="name of the strategy whose tuned model is mixed with the base")
    alpha: float = Field(0.5, description="theta = (1 - alpha) * base + alpha * tuned")


class IntruderSpec(StrictModel):
    """A strategy that trains nothing: another (LoRA) strategy's adapter with its intruder dimensions reduced by
    PEFT's ``reduce_intruder_dimension`` (``sftlab.train.intruders``)."""

    source: str = Field(..., description="name of the LoRA strategy whose adapter is reduced")
    top_k: int = Field(10, ge=1, description="singular vectors of W + dW examined per layer")
    threshold_epsilon: float = Field(0.5, gt=0, description="an intruder's best cosine with the base's is below this")
    mitigation_lambda: float = Field(0.75, ge=0, le=1, description="scale each intruder keeps (1: all, 0: none)")


class SafeLoraSpec(StrictModel):
    """A strategy that trains nothing: another (LoRA) strategy's adapter projected by SafeLoRA (Hsu et al. 2024,
    ``sftlab.train.safelora``) toward the alignment direction of an aligned model and its unaligned base."""

    source: str = Field(..., description="name of the LoRA strategy whose adapter is projected")
    aligned: str = Field(..., description="the aligned model (a dir or built-in name; the sweep's base, usually)")
    unaligned: str = Field(..., description="its unaligned base, of the same shapes")
    threshold: float = Field(0.5, description="project each layer whose cos(dW, C dW) is at most this")
    num_layers: int | None = Field(None, ge=1, description="instead, project the layers with the lowest cosine")
