"""Style capture, prompt adherence and surface-form drift: what a collapsed fine-tune looks like from outside.

A fine-tune that has collapsed onto its SFT set answers every prompt in that set's style, whatever was
asked. Lexical diversity cannot see it (incoherent text is lexically diverse), so the audit measures it
directly, three ways:

* **Style capture** (:func:`fit_style`, :func:`style_shares`). A light text classifier, TF-IDF of character
  1-4-grams and word 1-2-grams (case and punctuation kept) with L2-regularised logistic regression, is
  trained to tell SFT responses (label 1) from the base model's own answers to the audit prompts (label 0).
  Words that are neither frequent in the SFT set nor used in the base's answers to several prompts are
  masked to their shape first (text distortion, Stamatatos 2017: "Boiling" -> "Xxxxxxx"), so the classifier
  learns style (casing, punctuation, function words, the SFT set's own phrases) and not the topics of the
  audit prompts.
  It is cross-fitted over prompts: the prompts are split into folds, and each fold's answers (of every
  model, the base's included) are scored by the classifier trained without that fold's base answers and
  without that fold's share of SFT responses. So no answer is scored by a classifier that saw its prompt
  among the base-labelled examples, and the base's own share is an honest floor (its false-positive rate).
  The share of a model's answers called SFT-style, against that floor, is the style capture. When the audit
  prompts are unrelated to the SFT task, it is the collapse measure.
* **Prompt adherence** (:func:`adherence_scores`): cosine(e(prompt), e(answer)) with a sentence-embedding
  model, per answer; compared with the base as a paired difference over prompts.
* **Surface form** (:func:`starts_lower`, :func:`spaced_punctuation`, answer length, :func:`stopped`): per
  answer, cheap and readable; they name the damage (lower-cased, tokenised text) in plain words.

Intervals are percentile bootstrap 95% intervals resampling prompts (Efron 1979): every answer of a
resampled prompt comes along (a cluster bootstrap, since the K samples of one prompt are not independent),
and, for differences, the same prompts are drawn for both models (paired).
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import FunctionTransformer

Stat = Literal["mean", "median"]

# At most this many SFT responses train the classifier (a seeded subsample): enough to learn a style,
# cheap on a large SFT set.
MAX_SFT_RESPONSES = 2000
# Word tokens: words, and each punctuation mark on its own, so " ," and "," are the same token but a
# capitalised word is not its lower-case form.
WORD_PATTERN = r"(?u)\b\w+\b|[^\w\s]"
# A punctuation mark with a space before it and a space (or the end) after it: "good , but" and "end ."
WORD_RE = re.compile(r"\w+")
SPACED_PUNCT = re.compile(r"\s[,.;:!?](?=\s|$)")


# --------------------------------------------------------------------------------------------------
# Bootstrap over prompts


def _pooled(groups: Sequence[Sequence[float]], idx: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(groups[i], dtype=float) for i in idx]) if len(idx) else np.zeros(0)


def _stat(values: np.ndarray, stat: Stat) -> float:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan")
    return float(values.mean() if stat == "mean" else np.median(values))


def cluster_bootstrap(groups: Sequence[Sequence[float]], stat: Stat = "mean", n_boot: int = 1000,
                      seed: int = 0) -> tuple[float, float, float]:
    """stat over every item of every group, and its percentile 95% interval resampling whole groups.

    ``groups[p]`` are the values of prompt p's answers (NaN = undefined for that answer, left out). Each
    replicate draws P prompts with replacement and takes ``stat`` ("mean" or "median") of their pooled
    items. Returns (value, low, high); NaN when no item is defined.
    """
    value = _stat(_pooled(groups, np.arange(len(groups))), stat)
    if math.isnan(value):
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    reps = [_stat(_pooled(groups, rng.integers(0, len(groups), len(groups))), stat) for _ in range(n_boot)]
    low, high = np.nanpercentile(reps, [2.5, 97.5])
    return value, float(low), float(high)


def paired_cluster_bootstrap(base: Sequence[Sequence[float]], tuned: Sequence[Sequence[float]], stat: Stat = "mean",
                             n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """stat(tuned) - stat(base) over pooled answers, with a paired cluster-bootstrap 95% interval over prompts.

    ``base[p]`` and ``tuned[p]`` are the two models' answers to the same prompt p; each replicate draws the
    same prompt indices for both. Returns (delta, low, high); NaN when either side has no defined item.
    """
    if len(base) != len(tuned):
        raise ValueError(f"paired samples differ in prompts: {len(base)} vs {len(tuned)}")
    everything = np.arange(len(base))
    delta = _stat(_pooled(tuned, everything), stat) - _stat(_pooled(base, everything), stat)
    if math.isnan(delta):
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(base), len(base))
        reps.append(_stat(_pooled(tuned, idx), stat) - _stat(_pooled(base, idx), stat))
    low, high = np.nanpercentile(reps, [2.5, 97.5])
    return float(delta), float(low), float(high)


# --------------------------------------------------------------------------------------------------
# Surface form, per answer


def starts_lower(text: str) -> float:
    """1.0 when the answer's first letter is lower case, 0.0 when upper case, NaN when it has no cased letter."""
    for ch in text:
        if ch.islower():
            return 1.0
        if ch.isupper():
            return 0.0
    return float("nan")


def spaced_punctuation(text: str) -> float:
    """1.0 when the answer has a tokenised punctuation mark (" ," " ." " ;" " :" " !" " ?" between spaces), else 0.0.

    This is the surface form of tokenised corpora (Penn Treebank style, WikiText): "good , but bad ." An
    ellipsis (" ...") or a decimal (" .5") does not count.
    """
    return 1.0 if SPACED_PUNCT.search(text) else 0.0


def stopped(n_tokens: int, max_new_tokens: int) -> float:
    """1.0 when an answer of ``n_tokens`` generated tokens (EOS not counted) ended before the token budget."""
    return 1.0 if n_tokens < max_new_tokens else 0.0


SURFACE_STATS: dict[str, tuple[str, Stat]] = {
    "starts_lower": ("answers starting in lower case", "mean"),
    "spaced_punctuation": ('answers with tokenised punctuation (" ," " .")', "mean"),
    "length": ("median answer length (tokens)", "median"),
    "stop_rate": ("answers that end before max_new_tokens", "mean"),
}


def surface_values(texts: Sequence[Sequence[str]], lengths: Sequence[Sequence[int]],
                   max_new_tokens: int) -> dict[str, list[list[float]]]:
    """Every surface statistic of every answer: ``out[stat][p][k]`` for answer k to prompt p."""
    return {
        "starts_lower": [[starts_lower(t) for t in ts] for ts in texts],
        "spaced_punctuation": [[spaced_punctuation(t) for t in ts] for ts in texts],
        "length": [[float(n) for n in ns] for ns in lengths],
        "stop_rate": [[stopped(n, max_new_tokens) for n in ns] for ns in lengths],
    }


# --------------------------------------------------------------------------------------------------
# Prompt adherence


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(a_i, b_i) = a_i . b_i / (||a_i|| ||b_i||) for each row pair (norms clipped at 1e-12)."""
    a = np.atleast_2d(np.asarray(a, dtype=float))
    b = np.atleast_2d(np.asarray(b, dtype=float))
    num = (a * b).sum(-1)
    return num / (np.clip(np.linalg.norm(a, axis=-1), 1e-12, None) * np.clip(np.linalg.norm(b, axis=-1), 1e-12, None))


def adherence_scores(prompt_embeddings: np.ndarray, answer_embeddings: Sequence[np.ndarray]) -> list[list[float]]:
    """Prompt adherence of every answer: ``out[p][k] = cos(e(prompt_p), e(answer_pk))``.

    ``prompt_embeddings`` is (P, d); ``answer_embeddings[p]`` is (K, d), prompt p's answers.
    """
    if len(prompt_embeddings) != len(answer_embeddings):
        raise ValueError(f"{len(prompt_embeddings)} prompt embeddings for {len(answer_embeddings)} prompts' answers")
    return [cosine_rows(np.broadcast_to(p, np.shape(a)), a).tolist() for p, a in zip(prompt_embeddings, answer_embeddings)]


# --------------------------------------------------------------------------------------------------
# Style capture


def word_shape(word: str) -> str:
    """A word's shape: each upper-case letter -> "X", lower-case -> "x", digit -> "0" ("Boil2" -> "Xxxx0")."""
    return "".join("X" if c.isupper() else "x" if c.isalpha() else "0" if c.isdigit() else c for c in word)


def distort(text: str, keep: frozenset[str]) -> str:
    """Text distortion (Stamatatos 2017): every word not in ``keep`` becomes its :func:`word_shape`.

    Punctuation, spacing, casing and word lengths survive; the topic of the masked words does not.
    """
    return WORD_RE.sub(lambda m: m.group() if m.group() in keep else word_shape(m.group()), text)


def kept_words(sft_responses: Sequence[str], base_answers: Sequence[Sequence[str]], n_words: int = 300,
               min_prompts: int = 2) -> frozenset[str]:
    """The words the classifier may see as themselves; every other word is masked to its shape.

    The ``n_words`` most frequent words (case kept) of the SFT responses by document frequency (in 2 or
    more responses), and those of the base's answers counted by prompts: a word must occur in the answers
    to ``min_prompts`` or more prompts. Otherwise the base class is learnt from its prompts' topics ("egg",
    "horizon"), and the answers to a held-out prompt, on another topic, look unlike the base's. Words
    tied at the cut are taken in alphabetical order, so the same answers always keep the same words.
    """
    sft_df: Counter[str] = Counter(w for t in sft_responses for w in set(WORD_RE.findall(t)))
    base_pf: Counter[str] = Counter(w for ts in base_answers for w in {w for t in ts for w in WORD_RE.findall(t)})
    sft_words = [w for w, c in most_frequent(sft_df, n_words) if c >= 2]
    base_words = [w for w, c in most_frequent(base_pf, n_words) if c >= min_prompts]
    return frozenset(sft_words) | frozenset(base_words)


def most_frequent(counts: Counter[str], n: int) -> list[tuple[str, int]]:
    """The ``n`` most frequent entries, ties broken by the word. ``Counter.most_common`` breaks ties by
    insertion order, which here follows the iteration order of a set of strings, and so changes from one
    process to the next with Python's string-hash seed."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]


def style_pipeline(keep: frozenset[str], seed: int = 0) -> Pipeline:
    """Text distortion (:func:`distort` with ``keep``), TF-IDF of character 1-4-grams and word 1-2-grams, then
    logistic regression (sklearn).

    Nothing is lower-cased, so casing is a feature; character n-grams cross word boundaries, so " ," is
    one. Sublinear tf (1 + log tf) and L2-normalised rows keep long answers from dominating. The
    regression is L2-regularised (C = 1), with balanced class weights (the classes differ in size) and
    the given seed.
    """
    features = FeatureUnion([
        ("char", TfidfVectorizer(analyzer="char", ngram_range=(1, 4), lowercase=False, sublinear_tf=True,
                                 min_df=2, max_features=50_000)),
        ("word", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), lowercase=False, sublinear_tf=True,
                                 token_pattern=WORD_PATTERN, min_df=2, max_features=50_000)),
    ])
    classifier = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000, random_state=seed)
    masker = FunctionTransformer(lambda texts: [distort(t, keep) for t in texts])
    return Pipeline([("distort", masker), ("features", features), ("classifier", classifier)])


@dataclass
class StyleFit:
    """A cross-fitted style classifier (see the module docstring).

    ``fold_of_prompt[p]`` is the fold prompt p was held out in; ``fold_models[f]`` the pipeline trained
    without fold f; ``final`` the pipeline trained on everything (for its features and for scoring text
    that belongs to no prompt, such as a reference corpus).
    """

    fold_models: list[Pipeline]
    fold_of_prompt: list[int]
    final: Pipeline
    sft_recall: float  # held-out SFT responses called SFT-style
    base_recall: float  # held-out base answers called base-style
    n_sft: int
    n_base: int

    @property
    def balanced_accuracy(self) -> float:
        """Held-out balanced accuracy: the mean of the two classes' recalls (0.5 is chance)."""
        return (self.sft_recall + self.base_recall) / 2


def _fit(pipe: Pipeline, sft: Sequence[str], base: Sequence[str]) -> Pipeline:
    return pipe.fit(list(sft) + list(base), np.r_[np.ones(len(sft), dtype=int), np.zeros(len(base), dtype=int)])


def _calls_sft(pipe: Pipeline, texts: Sequence[str]) -> np.ndarray:
    if not texts:
        return np.zeros(0)
    return (pipe.predict(list(texts)) == 1).astype(float)


def fit_style(sft_responses: Sequence[str], base_answers: Sequence[Sequence[str]], seed: int = 0,
              folds: int = 5, max_sft: int = MAX_SFT_RESPONSES) -> StyleFit:
    """Cross-fit the style classifier: SFT responses (1) against the base's answers to each prompt (0).

    The prompts (and, independently, the SFT responses) are split at random (seeded) into
    ``min(folds, n_prompts)`` folds. For fold f, a pipeline is trained on the base answers of every other
    fold and the SFT responses of every other fold; it scores fold f's held-out SFT responses and base
    answers (the held-out recalls) and, later, every model's answers to fold f's prompts. Empty answers
    are not training examples.
    """
    n_prompts = len(base_answers)
    if n_prompts < 2:
        raise ValueError("the style classifier needs the base's answers to at least 2 prompts")
    rng = np.random.default_rng(seed)
    sft = [t for t in sft_responses if t.strip()]
    if len(sft) > max_sft:
        sft = [sft[i] for i in sorted(rng.choice(len(sft), max_sft, replace=False))]
    if len(sft) < 2:
        raise ValueError("the style classifier needs at least 2 non-empty SFT responses")
    k = min(folds, n_prompts, len(sft))
    fold_of_prompt = rng.permutation(np.arange(n_prompts) % k).tolist()
    fold_of_sft = rng.permutation(np.arange(len(sft)) % k)
    models, sft_hits, base_hits = [], [], []
    for f in range(k):
        train_base = [t for p, ts in enumerate(base_answers) if fold_of_prompt[p] != f for t in ts if t.strip()]
        test_base = [t for p, ts in enumerate(base_answers) if fold_of_prompt[p] == f for t in ts if t.strip()]
        train_sft = [t for t, g in zip(sft, fold_of_sft) if g != f]
        test_sft = [t for t, g in zip(sft, fold_of_sft) if g == f]
        keep = kept_words(train_sft, [ts for p, ts in enumerate(base_answers) if fold_of_prompt[p] != f])
        pipe = _fit(style_pipeline(keep, seed), train_sft, train_base)
        models.append(pipe)
        sft_hits.append(_calls_sft(pipe, test_sft))
        base_hits.append(1.0 - _calls_sft(pipe, test_base))
    all_base = [t for ts in base_answers for t in ts if t.strip()]
    final = _fit(style_pipeline(kept_words(sft, base_answers), seed), sft, all_base)
    sft_recall = float(np.concatenate(sft_hits).mean())
    base_pooled = np.concatenate(base_hits)
    base_recall = float(base_pooled.mean()) if len(base_pooled) else float("nan")
    return StyleFit(models, fold_of_prompt, final, sft_recall, base_recall, len(sft), len(all_base))


@functools.lru_cache(maxsize=4)
def fitted_style(sft_responses: tuple[str, ...], base_answers: tuple[tuple[str, ...], ...], seed: int) -> StyleFit:
    """:func:`fit_style`, remembered for the life of the process: every audit of a sweep fits the same
    classifier (the same SFT responses against the same base's answers), so all but the first reuse it.
    The fit is only read afterwards."""
    return fit_style(sft_responses, base_answers, seed)


def style_shares(fit: StyleFit, answers: Sequence[Sequence[str]]) -> list[list[float]]:
    """Per answer, 1.0 when the classifier calls it SFT-style: ``out[p][k]``, scored by the fold model of prompt p.

    ``answers`` are any model's answers to the same prompts the classifier was fitted on. Empty answers
    have no style (NaN).
    """
    if len(answers) != len(fit.fold_of_prompt):
        raise ValueError(f"answers to {len(answers)} prompts; the classifier was fitted on {len(fit.fold_of_prompt)}")
    out: list[list[float]] = []
    for p, texts in enumerate(answers):
        pipe = fit.fold_models[fit.fold_of_prompt[p]]
        nonempty = [t for t in texts if t.strip()]
        calls = iter(_calls_sft(pipe, nonempty).tolist())
        out.append([next(calls) if t.strip() else float("nan") for t in texts])
    return out


def corpus_pieces(texts: Sequence[str], limit: int = 500) -> list[str]:
    """A reference corpus as answer-sized pieces for the classifier: its non-empty lines (paragraphs), the first ``limit``.

    A whole article is far longer than any answer the classifier was trained on; its paragraphs are not.
    """
    pieces = [line.strip() for text in texts for line in text.splitlines() if line.strip()]
    return pieces[:limit]


def top_features(pipe: Pipeline, n: int = 12) -> dict[str, list[dict[str, object]]]:
    """The n-grams with the largest weights towards each class: ``{"sft": [...], "base": [...]}``.

    Each entry has ``kind`` ("char" or "word"), the n-gram ``text`` and its logistic-regression ``weight``
    (on the TF-IDF feature; positive pushes towards SFT-style).
    """
    names = pipe.named_steps["features"].get_feature_names_out()
    coef = pipe.named_steps["classifier"].coef_[0]
    order = np.argsort(coef)

    def entry(i: int) -> dict[str, object]:
        kind, _, text = str(names[i]).partition("__")
        return {"kind": kind, "text": text, "weight": float(coef[i])}

    return {"sft": [entry(i) for i in order[::-1][:n] if coef[i] > 0],
            "base": [entry(i) for i in order[:n] if coef[i] < 0]}


# --------------------------------------------------------------------------------------------------
# The section's table


def _interval(triple: tuple[float, float, float], key: str = "value") -> dict[str, float]:
    return {key: triple[0], "ci_low": triple[1], "ci_high": triple[2]}


def style_table(
    samples: dict[str, list[list[str]]],
    lengths: dict[str, list[list[int]]],
    base: str,
    max_new_tokens: int,
    sft_responses: Sequence[str] = (),
    sft_lengths: Sequence[int] = (),
    adherence: dict[str, list[list[float]]] | None = None,
    base_logprob: dict[str, list[float]] | None = None,
    corpora: dict[str, list[str]] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    n_features: int = 12,
) -> dict[str, object]:
    """Style capture, prompt adherence and surface form of every model, and each tuned model's deltas vs ``base``.

    ``samples[m][p]`` are model m's answers to prompt p and ``lengths[m][p]`` their lengths in generated
    tokens. ``sft_responses`` (may be empty: no style capture) train the classifier; ``adherence[m][p][k]``
    are prompt-answer cosines (None: no embedding model); ``base_logprob[m][p]`` the mean log-probability
    under the base of tuned model m's scored answer to prompt p; ``corpora`` are reference texts the final
    classifier scores (the share it calls SFT-style). Every figure is in the returned dict (report.json).
    Style capture needs at least 2 prompts and 2 non-empty SFT responses; otherwise ``capture_skipped`` says why.
    """
    models = list(samples)
    tuned = [m for m in models if m != base]
    out: dict[str, object] = {"models": models, "base": base, "n_prompts": len(samples[base])}

    # Surface form.
    surface = {m: surface_values(samples[m], lengths[m], max_new_tokens) for m in models}
    surf: dict[str, object] = {"stats": {k: {"label": lab, "stat": st} for k, (lab, st) in SURFACE_STATS.items()},
                               "models": {}, "deltas": {}}
    for m in models:
        surf["models"][m] = {k: _interval(cluster_bootstrap(surface[m][k], st, n_boot, seed))
                             for k, (_, st) in SURFACE_STATS.items()}
    for m in tuned:
        surf["deltas"][m] = {k: _interval(paired_cluster_bootstrap(surface[base][k], surface[m][k], st, n_boot, seed),
                                          "delta") for k, (_, st) in SURFACE_STATS.items()}
    if sft_responses:
        sft_surface = surface_values([list(sft_responses)], [list(sft_lengths) or [0] * len(sft_responses)], 10**9)
        surf["sft_data"] = {"starts_lower": _stat(np.asarray(sft_surface["starts_lower"][0]), "mean"),
                            "spaced_punctuation": _stat(np.asarray(sft_surface["spaced_punctuation"][0]), "mean"),
                            "length": _stat(np.asarray(sft_surface["length"][0]), "median") if sft_lengths else None}
    out["surface"] = surf

    # Prompt adherence, and the base's log-probability of the tuned answers.
    if adherence is not None:
        adh: dict[str, object] = {"models": {}, "deltas": {}, "per_prompt": {}, "per_sample": {}}
        for m in models:
            adh["models"][m] = _interval(cluster_bootstrap(adherence[m], "mean", n_boot, seed))
            adh["per_prompt"][m] = [_stat(np.asarray(v, dtype=float), "mean") for v in adherence[m]]
            # Each answer's own cosine: what a hand label of that answer is checked against.
            adh["per_sample"][m] = [[float(x) for x in v] for v in adherence[m]]
        for m in tuned:
            adh["deltas"][m] = _interval(paired_cluster_bootstrap(adherence[base], adherence[m], "mean", n_boot, seed),
                                         "delta")
        out["adherence"] = adh
    if base_logprob:
        out["base_logprob"] = {m: _interval(cluster_bootstrap([[v] for v in lp], "mean", n_boot, seed))
                               for m, lp in base_logprob.items()}

    # Style capture.
    if sft_responses and (len(samples[base]) < 2 or sum(bool(t.strip()) for t in sft_responses) < 2):
        out["capture_skipped"] = "style capture needs at least 2 prompts and 2 non-empty SFT responses"
    elif sft_responses:
        fit = fitted_style(tuple(sft_responses), tuple(tuple(a) for a in samples[base]), seed)
        shares = {m: style_shares(fit, samples[m]) for m in models}
        cap: dict[str, object] = {
            "balanced_accuracy": fit.balanced_accuracy, "sft_recall": fit.sft_recall, "base_recall": fit.base_recall,
            "n_sft": fit.n_sft, "n_base": fit.n_base, "folds": len(fit.fold_models),
            "models": {m: _interval(cluster_bootstrap(shares[m], "mean", n_boot, seed)) for m in models},
            "deltas": {m: _interval(paired_cluster_bootstrap(shares[base], shares[m], "mean", n_boot, seed), "delta")
                       for m in tuned},
            "per_prompt": {m: [_stat(np.asarray(v, dtype=float), "mean") for v in shares[m]] for m in models},
            "per_sample": {m: [[float(x) for x in v] for v in shares[m]] for m in models},
            "features": top_features(fit.final, n_features),
        }
        if corpora:
            cap["corpora"] = {name: float(_calls_sft(fit.final, pieces).mean())
                              for name, texts in corpora.items() if (pieces := corpus_pieces(texts))}
        out["capture"] = cap
    return out
