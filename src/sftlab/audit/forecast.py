"""Forgetting forecast: how far a tuned model moved from its base on the SFT set's own prompts.

"RL's Razor" (Shenfeld, Pari and Agrawal 2025, "RL's Razor: Why Online Reinforcement Learning Forgets
Less", arXiv 2509.04259) finds that how much a fine-tune forgets is predicted, across training algorithms,
by the KL divergence between the base policy pi_0 and the tuned policy pi measured on the *new task's*
inputs, in the forward direction:

    E_{x ~ tau} [ KL(pi_0(. | x) || pi(. | x)) ],   tau = the new task's prompts,

and that the reverse direction predicts it less well. Nothing in it needs a benchmark, only the SFT
prompts and the two models, so it can be read before any forgetting is measured.

What sftlab computes, per tuned model: on up to ``forecast_prompts`` distinct prompts of the SFT set
(the audit's ``sft_data``), the tuned model samples answers (the audit's sampler and cache); at every
position t of every answer, both models' full-vocabulary next-token distributions given the same prefix
are compared,

    forward_t = KL(p_base || p_tuned) = sum_v p_base(v) (log p_base(v) - log p_tuned(v))   (the headline)
    reverse_t = KL(p_tuned || p_base) = sum_v p_tuned(v) (log p_tuned(v) - log p_base(v))   (beside it)

and the forecast is the mean over all positions (nats per token), with a 95% bootstrap interval that
resamples prompts. Where this differs from the paper: the paper's KL is over whole responses; here it is
the per-token KL along the tuned model's own samples (so the prefixes are the tuned model's, the
distribution compared at each of them is the full next-token one). A position is also scored where the
tuned model chose to stop (its EOS), since stopping early is part of what fine-tuning changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from sftlab.audit.stats import bootstrap_ratio_ci
from sftlab.audit.teacher_forcing import continuation_logits, in_row_slices
from sftlab.config import AuditConfig

SOURCE = "Shenfeld et al. 2025, \"RL's Razor: Why Online Reinforcement Learning Forgets Less\" (arXiv 2509.04259)"


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probabilities; entries where p underflows to 0 add 0 (never 0 * inf)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1).clamp_min(0.0)


def token_kl(base_logits: torch.Tensor, tuned_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position KL between the base's and the tuned model's next-token distributions.

    ``base_logits`` and ``tuned_logits`` are (N, V) logits at the same N positions. Returns (forward,
    reverse), each (N,), in nats, computed in float32 whatever the logits' dtype:

    * forward = KL(p_base || p_tuned) = sum_v p_base(v) (log p_base(v) - log p_tuned(v)), the direction
      RL's Razor (Shenfeld et al. 2025) finds forgetting to track;
    * reverse = KL(p_tuned || p_base) = sum_v p_tuned(v) (log p_tuned(v) - log p_base(v)).
    """
    b = torch.log_softmax(base_logits.float(), dim=-1)
    t = torch.log_softmax(tuned_logits.float(), dim=-1)
    return _kl(b, t), _kl(t, b)


def scored_continuation(answer: Sequence[int], max_new_tokens: int, placeholder: int) -> list[int]:
    """The token ids to teacher-force so that every position of a sampled answer is scored.

    The sampler strips the EOS, so an answer shorter than ``max_new_tokens`` ended with one: the position
    after its last token (where the model chose to stop) is scored too, by appending ``placeholder``. Only
    the distributions *before* each continuation token are read, so the placeholder's own id never matters.
    An answer cut at ``max_new_tokens`` has no such position.
    """
    ids = list(answer)
    return ids + [placeholder] if len(ids) < max_new_tokens else ids


@dataclass
class AnswerKL:
    """Per-position forward and reverse KL along one answer (arrays of its scored length)."""

    forward: np.ndarray
    reverse: np.ndarray


@torch.no_grad()
def score_forecast(
    tuned: PreTrainedModel,
    base: PreTrainedModel,
    tuned_contexts: Sequence[Sequence[int]],
    base_contexts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 8,
    on_done: Callable[[int], None] | None = None,
) -> list[AnswerKL]:
    """Forward and reverse KL at every position of each continuation, both models teacher-forced.

    The tuned model reads ``tuned_contexts[i]``, the base ``base_contexts[i]`` (the same ids, or a plain
    prompt), each followed by ``continuations[i]`` (see :func:`scored_continuation`). One forward pass per
    model per batch, in length order to limit padding. Contexts must be non-empty.
    """
    if any(len(c) == 0 for c in list(tuned_contexts) + list(base_contexts)):
        raise ValueError("every context needs at least one token")
    results: list[AnswerKL] = [AnswerKL(np.zeros(0), np.zeros(0)) for _ in continuations]
    todo = sorted((i for i, c in enumerate(continuations) if c), key=lambda i: len(tuned_contexts[i]) + len(continuations[i]))
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        conts = [continuations[i] for i in batch]
        t_logits = continuation_logits(tuned, [tuned_contexts[i] for i in batch], conts, pad_id)
        b_logits = continuation_logits(base, [base_contexts[i] for i in batch], conts, pad_id)
        forward, reverse = (x.cpu().numpy() for x in in_row_slices(token_kl, b_logits.to(t_logits.device), t_logits))
        offset = 0
        for i, c in zip(batch, conts):
            results[i] = AnswerKL(forward[offset : offset + len(c)], reverse[offset : offset + len(c)])
            offset += len(c)
        if on_done is not None:
            on_done(len(batch))
    return results


def summarize_forecast(per_prompt: Sequence[Sequence[AnswerKL]], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The forecast of one tuned model: mean per-token KL over all scored positions, both directions.

    ``per_prompt[p]`` holds the scored answers to prompt p. Each direction's ``mean`` pools positions
    (sum of KL / number of positions); its 95% interval is a percentile bootstrap that resamples prompts
    (answers to one prompt are not independent, so prompts, not tokens, are the units). An SFT set with a
    single distinct prompt has nothing to resample at that level; its answers, independent samples given
    that prompt, are the units then (``resampled`` says which).
    """
    units = per_prompt if len(per_prompt) != 1 else [[a] for a in per_prompt[0]]
    positions = np.array([sum(len(a.forward) for a in answers) for answers in units], dtype=float)
    out: dict[str, Any] = {"n_prompts": len(per_prompt), "n_answers": sum(len(a) for a in per_prompt),
                           "n_positions": int(positions.sum()),
                           "resampled": "prompts" if len(per_prompt) != 1 else "answers"}
    for key in ("forward", "reverse"):
        sums = np.array([sum(float(getattr(a, key).sum()) for a in answers) for answers in units])
        mean, low, high = bootstrap_ratio_ci(sums, positions, n_boot=n_boot, seed=seed)
        out[key] = {"mean": mean, "ci_low": low, "ci_high": high}
    return out


def forecast_table(per_model: dict[str, Sequence[Sequence[AnswerKL]]], n_prompts: int, samples: int, template: str,
                   n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The audit's forecast section data (report.json ``sections.forecast``): every tuned model's summary."""
    return {"prompts": n_prompts, "samples_per_prompt": samples, "template": template, "source": SOURCE,
            "headline": "forward", "models": {m: summarize_forecast(f, n_boot, seed) for m, f in per_model.items()}}


def forecast_samples_per_prompt(cfg: AuditConfig, n_prompts: int) -> int:
    """``forecast_samples``, raised so that the forecast has at least ``forecast_min_answers`` answers in all
    (an SFT set with one instruction would otherwise rest on a single sampled answer)."""
    return max(cfg.forecast_samples, math.ceil(cfg.forecast_min_answers / max(n_prompts, 1)))
