"""Task quality of greedy outputs against references: BLEU, ROUGE-L and exact match.

* BLEU: sacrebleu's corpus BLEU (13a tokenisation, one reference per output), 0..100.
* ROUGE-L: mean F-measure of ``rouge_score`` (Lin 2004) with Porter stemming, 0..1.
* Exact match: share of outputs equal to their reference after stripping and collapsing whitespace.
"""

from __future__ import annotations

from collections.abc import Sequence

from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from sftlab.audit.stats import paired_bootstrap_ci


def normalize(text: str) -> str:
    """Whitespace-normalised text for exact match (case and punctuation are kept)."""
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> bool:
    """True when the two texts are equal up to whitespace."""
    return normalize(prediction) == normalize(reference)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure of each prediction against its reference."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]


def task_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU, mean ROUGE-L F and exact-match rate of ``predictions`` against ``references``."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return {"bleu": float("nan"), "rouge_l": float("nan"), "exact_match": float("nan"), "n": 0}
    rl = rouge_l(predictions, references)
    return {
        "bleu": float(BLEU().corpus_score(list(predictions), [list(references)]).score),
        "rouge_l": sum(rl) / len(rl),
        "exact_match": sum(map(exact_match, predictions, references)) / len(predictions),
        "n": len(predictions),
    }


def task_table(
    predictions: dict[str, list[str]], references: Sequence[str], base: str, n_boot: int = 1000, seed: int = 0
) -> dict[str, object]:
    """Scores of every model's greedy outputs, and each tuned model's deltas against ``base``.

    ROUGE-L and exact match are means over items, so their deltas get a paired bootstrap 95% interval;
    corpus BLEU is not a mean over items and its delta has none.
    """
    models: dict[str, object] = {m: task_scores(p, references) for m, p in predictions.items()}
    items = {m: {"rouge_l": rouge_l(p, references), "exact_match": [float(exact_match(a, b)) for a, b in
                                                                    zip(p, references)]}
             for m, p in predictions.items()}
    deltas: dict[str, object] = {}
    for model in predictions:
        if model == base:
            continue
        row: dict[str, object] = {"bleu": {"delta": models[model]["bleu"] - models[base]["bleu"],  # type: ignore[index]
                                           "ci_low": None, "ci_high": None}}
        for metric in ("rouge_l", "exact_match"):
            d, lo, hi = paired_bootstrap_ci(items[base][metric], items[model][metric], n_boot, seed)
            row[metric] = {"delta": d, "ci_low": lo, "ci_high": hi}
        deltas[model] = row
    examples = [{"reference": references[i], **{m: predictions[m][i] for m in predictions}}
                for i in range(min(5, len(references)))]
    return {"models": models, "deltas": deltas, "examples": examples}
