"""Output diversity: distinct-n, EAD, Self-BLEU, compression ratio, embedding diversity.

Every metric is a pure function of a list of outputs (token sequences or strings), so it can be
computed per input (the K samples of one prompt) or across inputs (the first sample of each prompt).
:func:`diversity_table` does both for every model and compares each tuned model with the base as
deltas with paired bootstrap 95% intervals over prompts.

Higher is more diverse for every metric except Self-BLEU and the compression ratio, where higher
means more repetitive; ``HIGHER_IS_DIVERSE`` records the direction so reports can say "lost"/"gained".
"""

from __future__ import annotations

import gzip
import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
from sacrebleu.metrics import BLEU

from sftlab.audit.stats import paired_bootstrap_ci

NGRAM_ORDERS = (1, 2, 3, 4)

# Direction of each metric: True when a higher value means more diverse output.
HIGHER_IS_DIVERSE: dict[str, bool] = {
    **{f"distinct_{n}": True for n in NGRAM_ORDERS},
    "ead": True,
    "self_bleu": False,
    "compression_ratio": False,
    "embedding_diversity": True,
}


def ngrams(seq: Sequence[Hashable], n: int) -> list[tuple[Hashable, ...]]:
    """The contiguous n-grams of one sequence (none when it is shorter than ``n``)."""
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def ngram_counts(seqs: Sequence[Sequence[Hashable]], n: int) -> tuple[int, int]:
    """(number of distinct n-grams, total number of n-grams) pooled over ``seqs``."""
    pooled: Counter[tuple[Hashable, ...]] = Counter()
    for seq in seqs:
        pooled.update(ngrams(seq, n))
    return len(pooled), sum(pooled.values())


def distinct_n(seqs: Sequence[Sequence[Hashable]], n: int) -> float:
    """distinct-n (Li et al. 2016): unique n-grams / total n-grams, pooled over all sequences.

    N-grams never cross sequence boundaries. 0.0 when there is no n-gram at all.
    """
    unique, total = ngram_counts(seqs, n)
    return unique / total if total else 0.0


def ead(seqs: Sequence[Sequence[Hashable]], n: int, vocab_size: int) -> float:
    """Expectation-adjusted distinct n-grams (Liu et al. 2022; used by Kirk et al. 2024).

    EAD = N_unique / (V * (1 - ((V - 1) / V) ** C)), with C the total number of n-grams and V the
    tokenizer's vocabulary size (Kirk et al. use V for every n). The denominator is the expected number
    of distinct items among C uniform draws from V, which removes distinct-n's bias against long
    outputs. Computed as ``-expm1(C * log1p(-1/V))`` so large C and V stay exact.
    """
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
    unique, total = ngram_counts(seqs, n)
    if total == 0:
        return 0.0
    expected = vocab_size * -math.expm1(total * math.log1p(-1.0 / vocab_size))
    return unique / expected


def mean_ead(seqs: Sequence[Sequence[Hashable]], vocab_size: int, orders: Sequence[int] = NGRAM_ORDERS) -> float:
    """EAD averaged over n-gram orders (1..4 by default), as Kirk et al. average over n."""
    return float(np.mean([ead(seqs, n, vocab_size) for n in orders]))


def _bleu() -> BLEU:
    # Sentence-level settings, as sacrebleu.sentence_bleu uses them (13a tokenisation, exp smoothing,
    # effective order): without effective order any output shorter than 4 tokens has no 4-gram and
    # scores 0 against anything, even an identical copy of itself.
    return BLEU(effective_order=True)


def self_bleu_items(texts: Sequence[str]) -> list[float]:
    """Per-output Self-BLEU terms: BLEU(y_i, {y_j : j != i}) for each i, in 0..100.

    Each other output is its own reference stream (``[[r] for r in refs]``): sacrebleu pairs the
    i-th hypothesis with the i-th entry of every stream, so a single stream ``[refs]`` would pair the
    hypothesis with ``refs[0]`` only and silently drop the rest (the GEM evaluation script's bug).
    """
    if len(texts) < 2:
        return []
    bleu = _bleu()
    out = []
    for i, hyp in enumerate(texts):
        refs = [[r] for j, r in enumerate(texts) if j != i]
        out.append(float(bleu.corpus_score([hyp], refs).score))
    return out


def self_bleu(texts: Sequence[str]) -> float:
    """Self-BLEU (Zhu et al. 2018): mean over i of BLEU(y_i, {y_j : j != i}), 0..100; higher = less diverse.

    NaN with fewer than two outputs (undefined).
    """
    items = self_bleu_items(texts)
    return float(np.mean(items)) if items else float("nan")


def compression_ratio(texts: Sequence[str]) -> float:
    """gzip compression ratio (Shaib et al. 2024): bytes of the joined text / bytes gzipped; higher = more repetitive.

    Texts are joined with newlines and encoded as UTF-8; ``mtime=0`` keeps the gzip header fixed so
    the figure is reproducible. NaN for empty input.
    """
    raw = "\n".join(texts).encode("utf-8")
    if not raw:
        return float("nan")
    return len(raw) / len(gzip.compress(raw, compresslevel=9, mtime=0))


def pairwise_cosine_items(embeddings: np.ndarray) -> list[float]:
    """For each row i, the mean cosine similarity to every other row (i excluded)."""
    n = len(embeddings)
    if n < 2:
        return []
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit = embeddings / np.clip(norms, 1e-12, None)
    sim = unit @ unit.T
    return [float((sim[i].sum() - sim[i, i]) / (n - 1)) for i in range(n)]


def embedding_diversity(embeddings: np.ndarray) -> float:
    """1 - mean pairwise cosine similarity of the outputs' embeddings (Tevet and Berant 2021). NaN for < 2."""
    items = pairwise_cosine_items(embeddings)
    return 1.0 - float(np.mean(items)) if items else float("nan")


# --------------------------------------------------------------------------------------------------
# Per model: per-input and across-input values


@dataclass
class ModelOutputs:
    """One model's samples, ready for scoring: ``tokens[p][k]`` and ``texts[p][k]`` for prompt p, sample k.

    ``embeddings[p]`` is a (K, d) array per prompt when an embedding model was given, else None.
    """

    texts: list[list[str]]
    tokens: list[list[list[int]]]
    embeddings: list[np.ndarray] | None = None


def metric_names(with_embeddings: bool) -> list[str]:
    """The metrics :func:`score_outputs` reports, in display order."""
    names = [f"distinct_{n}" for n in NGRAM_ORDERS] + ["ead", "self_bleu", "compression_ratio"]
    return names + (["embedding_diversity"] if with_embeddings else [])


def _scores(
    texts: Sequence[str], tokens: Sequence[Sequence[int]], emb: np.ndarray | None, vocab_size: int
) -> dict[str, float]:
    out = {f"distinct_{n}": distinct_n(tokens, n) for n in NGRAM_ORDERS}
    out["ead"] = mean_ead(tokens, vocab_size)
    out["self_bleu"] = self_bleu(texts)
    out["compression_ratio"] = compression_ratio(texts)
    if emb is not None:
        out["embedding_diversity"] = embedding_diversity(emb)
    return out


@dataclass
class DiversityScores:
    """Per-input values (one per prompt, per metric) and across-input values (one per metric)."""

    per_input: dict[str, list[float]]
    across_input: dict[str, float]
    # Per-item terms of the across-input metrics that decompose into a mean over outputs
    # (Self-BLEU, embedding similarity); the bootstrap resamples these.
    across_items: dict[str, list[float]] = field(default_factory=dict)


def score_outputs(outputs: ModelOutputs, vocab_size: int) -> DiversityScores:
    """All diversity metrics per input (each prompt's K samples) and across inputs (first sample each)."""
    with_emb = outputs.embeddings is not None
    per_input: dict[str, list[float]] = {name: [] for name in metric_names(with_emb)}
    for p, (texts, toks) in enumerate(zip(outputs.texts, outputs.tokens)):
        emb = outputs.embeddings[p] if outputs.embeddings is not None else None
        for name, value in _scores(texts, toks, emb, vocab_size).items():
            per_input[name].append(value)
    first_texts = [t[0] for t in outputs.texts]
    first_tokens = [t[0] for t in outputs.tokens]
    first_emb = np.stack([e[0] for e in outputs.embeddings]) if outputs.embeddings is not None else None
    across = _scores(first_texts, first_tokens, first_emb, vocab_size)
    items = {"self_bleu": self_bleu_items(first_texts)}
    if first_emb is not None:
        items["embedding_diversity"] = [1.0 - c for c in pairwise_cosine_items(first_emb)]
    return DiversityScores(per_input=per_input, across_input=across, across_items=items)


# --------------------------------------------------------------------------------------------------
# Base vs tuned


def _summary(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    if len(arr) == 0:
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}


def diversity_table(
    scores: dict[str, DiversityScores], base: str, n_boot: int = 1000, seed: int = 0
) -> dict[str, object]:
    """Side-by-side diversity of every model, and each non-base model's deltas against ``base``.

    Per-input deltas are mean(tuned) - mean(base) over prompts with a paired bootstrap 95% interval.
    Across-input deltas get an interval only for metrics that are a mean over outputs (Self-BLEU,
    embedding diversity); distinct-n, EAD and compression are set-level statistics whose value shifts
    under resampling with replacement (duplicates), so their across-input delta is given without one.
    """
    names = list(scores[base].per_input)
    table: dict[str, object] = {"metrics": names, "higher_is_diverse": {n: HIGHER_IS_DIVERSE[n] for n in names}}
    models: dict[str, object] = {}
    for model, sc in scores.items():
        models[model] = {
            "per_input": {n: _summary(sc.per_input[n]) for n in names},
            "across_input": {n: sc.across_input[n] for n in names},
        }
    table["models"] = models
    deltas: dict[str, object] = {}
    ref = scores[base]
    for model, sc in scores.items():
        if model == base:
            continue
        per_input = {}
        across = {}
        for n in names:
            d, lo, hi = paired_bootstrap_ci(ref.per_input[n], sc.per_input[n], n_boot, seed)
            per_input[n] = {"delta": d, "ci_low": lo, "ci_high": hi}
            if n in sc.across_items and len(sc.across_items[n]) == len(ref.across_items.get(n, [])):
                d, lo, hi = paired_bootstrap_ci(ref.across_items[n], sc.across_items[n], n_boot, seed)
                across[n] = {"delta": sc.across_input[n] - ref.across_input[n], "ci_low": lo, "ci_high": hi}
            else:
                across[n] = {"delta": sc.across_input[n] - ref.across_input[n], "ci_low": None, "ci_high": None}
        deltas[model] = {"per_input": per_input, "across_input": across}
    table["deltas"] = deltas
    return table
