"""Adversarial training on the input embeddings: FreeLB (Zhu et al. 2020) or SMART's smoothness term (Jiang et al.
2020), ``adversarial: {method, steps, step_size, epsilon, ...}``. The formulas are ``sftlab.train.adversarial``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sftlab.errors import UserError
from sftlab.settings import StrictModel
from sftlab.train.remedies.base import Attached, Remedy, RemedyContext


class AdversarialSettings(StrictModel):
    """Adversarial perturbation of the input embeddings of real tokens (``sftlab.train.adversarial``)."""

    method: Literal["freelb", "smart"] = Field(
        "freelb", description="freelb: train on the perturbed task loss; smart: add SMART's smoothness term"
    )
    steps: int = Field(1, ge=0, description="projected gradient ascent steps per micro-batch")
    step_size: float = Field(..., gt=0, description="eta: per-document L2 length (l2) or per-element size (linf)")
    epsilon: float = Field(..., gt=0, description="radius of the per-document ball the perturbation stays in")
    norm: Literal["l2", "linf"] = "l2"
    init: float = Field(0.0, ge=0, description="random start: a/sqrt(L*d)*U(-1,1) (l2) or U(-a,a) (linf)")
    smoothness_weight: float = Field(1.0, gt=0, description="SMART's lambda_s (method: smart only)")

    @model_validator(mode="after")
    def _consistent(self) -> AdversarialSettings:
        if self.method == "smart" and self.init == 0:
            raise ValueError("method: smart needs init > 0: the smoothness term's gradient is 0 at a zero perturbation")
        # Its default is allowed: a saved (dumped) config holds every key and must reload.
        default = type(self).model_fields["smoothness_weight"].default
        if self.method == "freelb" and "smoothness_weight" in self.model_fields_set and self.smoothness_weight != default:
            raise ValueError("smoothness_weight applies to method: smart only")
        return self


def build(ctx: RemedyContext) -> Attached:
    """FreeLB replaces the trainer's inner step; SMART's smoothness term is one more penalty."""
    from sftlab.train.adversarial import FreeLB, attach_adversarial

    settings, trainer = ctx.cfg.adversarial, ctx.trainer
    assert trainer is not None
    if trainer.is_deepspeed_enabled and settings.method == "freelb":
        raise UserError("adversarial method freelb runs several backwards per micro-batch, which DeepSpeed's "
                        "engine cannot (it steps on every backward); use method: smart, or DDP / FSDP")
    adversary = attach_adversarial(trainer.model, settings, pad_token_id=ctx.pad_token_id)
    if isinstance(adversary, FreeLB):
        return Attached(step=adversary, log_values=adversary.log_values)
    return Attached(penalty=adversary, log_values=adversary.log_values)


REMEDY = Remedy(
    key="adversarial",
    stage="after_trainer",
    summary="adversarial embeddings: FreeLB trains on perturbed inputs, SMART penalises the output's change",
    fields={"adversarial": (AdversarialSettings | None, None)},
    active=lambda cfg: cfg.adversarial is not None,
    describe=lambda cfg: (f"{cfg.adversarial.method} {cfg.adversarial.steps} ascent steps (eta {cfg.adversarial.step_size}, "
                          f"eps {cfg.adversarial.epsilon}, {cfg.adversarial.norm})"),
    build=build,
)
