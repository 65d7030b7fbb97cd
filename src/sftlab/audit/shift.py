"""Token distribution shift (Lin et al. 2023, "The Unlocking Spell on Base LLMs", AlignTDS).

For each tuned model's greedy answer, the answer is teacher-forced through the base model and, at every
answer position t, we record

* ``rank``: 1 + the number of vocabulary entries the base scores strictly higher than the token the
  tuned model chose (so the base's own argmax has rank 1, ties resolved in the token's favour);
* its class: unshifted (rank 1), marginal (rank 2-3) or shifted (rank > 3);
* ``kl``: KL(tuned || base) = sum_v p_tuned(v) (log p_tuned(v) - log p_base(v)) over the full vocabulary;
* ``base_prob``: p_base(token) and ``tuned_prob``: p_tuned(token).

Reference point: Lin et al. report 7.8% shifted positions for Llama-2-7b-chat against Llama-2-7b.

Where we differ from the AlignTDS code: it keeps the base's top-k tokens, renormalises their
probabilities over those k and finds the tuned token by string match against the top-k list. We use
full-vocabulary probabilities and compare token ids, so a token outside any top-k still gets its true
rank and probability, KL is exact, and no two tokens that decode to the same string are conflated. This
requires base and tuned models to share one vocabulary (checked by the caller).

Scoring is one batched forward pass per model over whole answers (right-padded, attention-masked);
:func:`score_per_position` is the slow AlignTDS-style reference (a re-forward of the prefix for every
position) used by the tests and the benchmark to check and time it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sftlab.audit.teacher_forcing import continuation_logits, in_row_slices

UNSHIFTED, MARGINAL, SHIFTED = 0, 1, 2
CLASS_NAMES = ("unshifted", "marginal", "shifted")
REFERENCE_SHIFTED = {"value": 0.078, "pair": "Llama-2-7b-chat vs Llama-2-7b", "source": "Lin et al. 2023"}


def classify(ranks: np.ndarray) -> np.ndarray:
    """AlignTDS classes: 0 unshifted (rank 1), 1 marginal (rank 2-3), 2 shifted (rank > 3)."""
    ranks = np.asarray(ranks)
    return np.where(ranks == 1, UNSHIFTED, np.where(ranks <= 3, MARGINAL, SHIFTED))


@dataclass
class AnswerShift:
    """Per-position scores of one answer (arrays of the answer's length)."""

    token_ids: list[int]
    ranks: np.ndarray
    kl: np.ndarray
    base_prob: np.ndarray
    tuned_prob: np.ndarray
    base_top: np.ndarray  # the base's own top-1 token id at each position

    @property
    def classes(self) -> np.ndarray:
        """Class per position (see :func:`classify`)."""
        return classify(self.ranks)


def position_scores(tuned_logits: torch.Tensor, base_logits: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rank, KL(tuned || base), probabilities and base argmax for N positions.

    ``tuned_logits`` and ``base_logits`` are (N, V) next-token logits at the positions whose chosen
    token is ``tokens`` (N,). Computed in float32 whatever the model dtype.
    """
    t_lp = torch.log_softmax(tuned_logits.float(), dim=-1)
    b_lp = torch.log_softmax(base_logits.float(), dim=-1)
    b_tok = b_lp.gather(-1, tokens[:, None]).squeeze(-1)
    t_tok = t_lp.gather(-1, tokens[:, None]).squeeze(-1)
    rank = 1 + (b_lp > b_tok[:, None]).sum(-1)
    # xlogy-style: entries where p_tuned underflows to 0 contribute 0, never 0 * -inf = nan.
    p_t = t_lp.exp()
    kl = torch.where(p_t > 0, p_t * (t_lp - b_lp), torch.zeros_like(p_t)).sum(-1).clamp_min(0.0)
    return {"rank": rank, "kl": kl, "base_prob": b_tok.exp(), "tuned_prob": t_tok.exp(), "base_top": b_lp.argmax(-1)}


@torch.no_grad()
def score_shift(
    tuned: PreTrainedModel,
    base: PreTrainedModel,
    tuned_contexts: Sequence[Sequence[int]],
    base_contexts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 8,
    on_done: Callable[[int], None] | None = None,
) -> list[AnswerShift]:
    """Score every answer (token ids the tuned model generated after ``tuned_contexts[i]``).

    The tuned model sees its own context; the base sees ``base_contexts[i]`` (the same ids by default,
    or a base-friendly plain prompt). One forward pass per model per batch; answers are batched in
    length order to limit padding. Contexts must be non-empty (the first answer token needs a
    predecessor). Empty answers give empty arrays.
    """
    if any(len(c) == 0 for c in list(tuned_contexts) + list(base_contexts)):
        raise ValueError("every context needs at least one token")
    results: list[AnswerShift | None] = [None] * len(answers)
    order = sorted(range(len(answers)), key=lambda i: len(tuned_contexts[i]) + len(answers[i]))
    empty = {k: np.zeros(0) for k in ("kl", "base_prob", "tuned_prob")}
    for i in order:
        if not answers[i]:
            results[i] = AnswerShift([], np.zeros(0, dtype=int), **empty, base_top=np.zeros(0, dtype=int))
    todo = [i for i in order if answers[i]]
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        ans = [answers[i] for i in batch]
        t_logits = continuation_logits(tuned, [tuned_contexts[i] for i in batch], ans, pad_id)
        b_logits = continuation_logits(base, [base_contexts[i] for i in batch], ans, pad_id)
        tokens = torch.tensor([t for a in ans for t in a], device=t_logits.device)
        scores = {k: v.cpu().numpy() for k, v in in_row_slices(position_scores, t_logits, b_logits.to(t_logits.device),
                                                                tokens).items()}
        offset = 0
        for i, a in zip(batch, ans):
            sl = slice(offset, offset + len(a))
            results[i] = AnswerShift(list(a), scores["rank"][sl], scores["kl"][sl], scores["base_prob"][sl],
                                     scores["tuned_prob"][sl], scores["base_top"][sl])
            offset += len(a)
        if on_done is not None:
            on_done(len(batch))
    return [r for r in results if r is not None]


@torch.no_grad()
def score_per_position(
    tuned: PreTrainedModel, base: PreTrainedModel, tuned_context: Sequence[int], base_context: Sequence[int],
    answer: Sequence[int],
) -> AnswerShift:
    """Slow reference: re-run both models on the growing prefix for every answer position (AlignTDS-style).

    Used to check :func:`score_shift` and to time it; never used by the audit itself.
    """
    device = next(base.parameters()).device
    rows = {k: [] for k in ("rank", "kl", "base_prob", "tuned_prob", "base_top")}
    for j, tok in enumerate(answer):
        t_ids = torch.tensor([list(tuned_context) + list(answer[:j])], device=device)
        b_ids = torch.tensor([list(base_context) + list(answer[:j])], device=device)
        t_last = tuned(input_ids=t_ids).logits[:, -1]
        b_last = base(input_ids=b_ids).logits[:, -1]
        for k, v in position_scores(t_last, b_last, torch.tensor([tok], device=device)).items():
            rows[k].append(v.item())
    return AnswerShift(list(answer), np.array(rows["rank"], dtype=int), np.array(rows["kl"]),
                       np.array(rows["base_prob"]), np.array(rows["tuned_prob"]), np.array(rows["base_top"], dtype=int))


def plain_prompt(messages: Sequence[object]) -> str:
    """A base-friendly plain prompt: every turn's text, blank-line separated, then a blank line.

    ``messages`` are :class:`sftlab.data.records.Message`-like (``.content``). No role tags or special
    tokens, so a base model that never saw a chat template reads it as ordinary text to continue.
    """
    return "\n\n".join(str(getattr(m, "content", m)).strip() for m in messages) + "\n\n"


def summarize_shift(
    shifts: Sequence[AnswerShift], tokenizer: PreTrainedTokenizerBase, top_n: int = 20
) -> dict[str, object]:
    """Aggregates over all answers' positions (pooled).

    * ``class_fraction``: share of positions per class, and ``n_positions``;
    * ``mean_kl``, ``mean_base_prob``;
    * ``by_position``: for answer position t = 0, 1, ...: mean KL, shifted share and count;
    * ``top_shifted``: the most frequent shifted tokens, each with its count and the base's most
      frequent preferred token at those positions.
    """
    ranks = np.concatenate([s.ranks for s in shifts]) if shifts else np.zeros(0, dtype=int)
    kl = np.concatenate([s.kl for s in shifts]) if shifts else np.zeros(0)
    base_prob = np.concatenate([s.base_prob for s in shifts]) if shifts else np.zeros(0)
    classes = classify(ranks)
    n = len(ranks)
    fractions = {name: float((classes == c).mean()) if n else float("nan") for c, name in enumerate(CLASS_NAMES)}

    longest = max((len(s.ranks) for s in shifts), default=0)
    by_pos = {"position": [], "mean_kl": [], "shifted": [], "count": []}
    for t in range(longest):
        at = [s for s in shifts if len(s.ranks) > t]
        by_pos["position"].append(t)
        by_pos["mean_kl"].append(float(np.mean([s.kl[t] for s in at])))
        by_pos["shifted"].append(float(np.mean([s.ranks[t] > 3 for s in at])))
        by_pos["count"].append(len(at))

    counts: Counter[int] = Counter()
    preferred: dict[int, Counter[int]] = {}
    for s in shifts:
        for tok, cls, top in zip(s.token_ids, s.classes, s.base_top):
            if cls == SHIFTED:
                counts[tok] += 1
                preferred.setdefault(tok, Counter())[int(top)] += 1
    top_shifted = [
        {"token": tokenizer.decode([tok]), "token_id": tok, "count": c,
         "base_preferred": tokenizer.decode([preferred[tok].most_common(1)[0][0]])}
        for tok, c in counts.most_common(top_n)
    ]
    return {
        "n_answers": len(shifts),
        "n_positions": n,
        "class_fraction": fractions,
        "mean_kl": float(kl.mean()) if n else float("nan"),
        "mean_base_prob": float(base_prob.mean()) if n else float("nan"),
        "by_position": by_pos,
        "top_shifted": top_shifted,
        "reference_shifted": REFERENCE_SHIFTED,
    }
