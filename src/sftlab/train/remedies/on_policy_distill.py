"""On-policy self-distillation (Shenfeld et al. 2026, arXiv 2601.19897; TRL's ``trl.experimental.sdft``):
``on_policy_distill: {teacher, mode, direction, top_k, resample_every, max_new_tokens, temperature, demo_template}``.

The model answers each SFT prompt itself and is trained toward its own next-token distributions when shown the
record's answer as an example. It replaces the run's training batches (prompts) and loss; the sampling,
scoring and loss are ``sftlab.train.onpolicy_distill``. Not the offline SDFT of ``sftlab data distill``
(Yang et al. 2024), whose targets are rewritten once before training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from sftlab.settings import StrictModel
from sftlab.train.remedies.base import Attached, Remedy, RemedyContext

if TYPE_CHECKING:
    from sftlab.config import TrainConfig

DEFAULT_DEMO_TEMPLATE = (
    "{prompt}\n\nHere is an example answer to this request:\n{demonstration}\n\nNow write an answer of your own."
)
# Remedies that only change how the forward reads the weights: they work on any loss.
COMBINES_WITH = {"cross_entropy", "bf16_weight_rounding", "on_policy_distill"}


class OnPolicyDistillSettings(StrictModel):
    """On-policy self-distillation: the student answers each SFT prompt itself and is trained toward the
    teacher, the model shown the record's answer as an example."""

    teacher: Literal["base", "live"] = Field(
        "base", description="base: the starting weights (TRL's default); live: the current weights")
    mode: Literal["full_logits", "topk_logits", "sampled_token"] = Field(
        "full_logits", description="full_logits: KL over the vocabulary (the paper); topk_logits: over the "
        "student's top_k tokens, renormalised (TRL's default); sampled_token: the reverse KL's one-sample estimator")
    direction: Literal["reverse", "forward"] = Field(
        "reverse", description="reverse: KL(student || teacher), the paper's; forward: KL(teacher || student)")
    top_k: int = Field(100, ge=1, description="tokens per position in mode topk_logits")
    resample_every: int = Field(
        1, ge=1, description="optimizer steps a record's sampled answer is reused for; 1 samples at every step")
    max_new_tokens: int = Field(64, ge=1, description="longest sampled answer")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the student's answers")
    demo_template: str = Field(
        DEFAULT_DEMO_TEMPLATE, description="the teacher's last user turn: {prompt} is the user's request, "
        "{demonstration} the record's answer")

    @model_validator(mode="after")
    def _consistent(self) -> OnPolicyDistillSettings:
        missing = [p for p in ("{prompt}", "{demonstration}") if p not in self.demo_template]
        if missing:
            raise ValueError(f"demo_template must contain {' and '.join(missing)}")
        if self.mode == "sampled_token" and self.direction != "reverse":
            raise ValueError("mode sampled_token estimates the reverse KL only: set direction: reverse")
        return self


def check(cfg: TrainConfig) -> None:
    """It replaces the batches and the loss: what reads either (another loss, a regularizer, a hook on the
    embeddings, a data transform) or shards the model is not combined with it yet."""
    from sftlab.train.remedies.registry import active_remedies

    if cfg.on_policy_distill is None:
        return
    clash = [r.key for r in active_remedies(cfg) if r.key not in COMBINES_WITH]
    clash += [key for key, on in (("preset", cfg.preset is not None), ("fsdp", cfg.fsdp is not None),
                                  ("deepspeed", cfg.deepspeed is not None), ("torch_compile", cfg.torch_compile),
                                  (f"method {cfg.method}", cfg.method in ("prefix", "prompt"))) if on]
    if clash:
        raise ValueError(f"on_policy_distill trains on the model's own answers with its own loss, and is not "
                         f"combined with {', '.join(clash)} yet: drop {'it' if len(clash) == 1 else 'them'}")


def build(ctx: RemedyContext) -> Attached:
    """Switch the trainer to the records' prompts and the distillation loss (before any hook is attached, so
    the base teacher's frozen copy carries none)."""
    from sftlab.train.onpolicy_distill import attach_on_policy_distill

    assert ctx.trainer is not None and ctx.tokenizer is not None
    distiller = attach_on_policy_distill(ctx.trainer, ctx.cfg.on_policy_distill, ctx.tokenizer, ctx.cfg.seed,
                                         ctx.cfg.max_length)
    return Attached(log_values=distiller.log_values)


def describe(cfg: TrainConfig) -> str:
    """Teacher, divergence and sampling."""
    s = cfg.on_policy_distill
    return (f"on-policy self-distillation ({s.teacher} teacher, {s.direction} KL, {s.mode}; answers of up to "
            f"{s.max_new_tokens} tokens, resampled every {s.resample_every} step(s))")


REMEDY = Remedy(
    key="on_policy_distill",
    stage="after_trainer",
    summary="on-policy self-distillation: the model's own answers, trained toward it shown the demonstration",
    fields={"on_policy_distill": (OnPolicyDistillSettings | None, None)},
    active=lambda cfg: cfg.on_policy_distill is not None,
    describe=describe,
    check=check,
    build=build,
)
