"""What the audit hands its measures: the :class:`AuditContext`, and the per-model outputs it holds.

The audit recipe (:mod:`sftlab.recipes.audit`) reads the inputs (:class:`Inputs`), runs every model
(:class:`ModelRun`: samples, greedy answers, perplexities, benchmark answers, forecast scores) and scores
each tuned model's answers under the base; then every measure builds its section from this context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from sftlab.audit.copying import SFTExample
from sftlab.audit.forecast import AnswerKL
from sftlab.audit.forgetting import MCItem, Perplexity
from sftlab.audit.shift import AnswerShift
from sftlab.config import AuditConfig
from sftlab.data.records import Message


@dataclass
class EvalItem:
    """One eval-set item: the prompt turns and the reference answer."""

    messages: list[Message]
    reference: str


@dataclass
class Inputs:
    """Every data file of the audit, read and checked before any model is loaded."""

    messages: list[list[Message]]
    references: dict[str, list[str]]
    benchmarks: dict[str, list[MCItem]]
    eval_items: list[EvalItem]
    sft_examples: list[SFTExample]
    sft_rejected: int = 0
    sft_prompts: list[list[Message]] = field(default_factory=list)  # for the forgetting forecast
    # measure -> its own prompt set, and whether it wants one greedy answer per prompt (else K samples)
    own_prompts: dict[str, tuple[list[list[Message]], bool]] = field(default_factory=dict)
    suites: list[str] = field(default_factory=list)  # the built-in probe suites used
    sources: dict[str, Any] = field(default_factory=dict)  # input -> the file(s) it was read from (the report's)


@dataclass
class ModelRun:
    """What one model produced."""

    prompt_ids: list[list[int]]
    samples: list[list[str]]
    greedy: list[str]
    greedy_ids: list[list[int]]
    first_sample_ids: list[list[int]]
    sample_lengths: list[list[int]] = field(default_factory=list)  # generated tokens of each sample, EOS excluded
    eval_greedy: list[str] = field(default_factory=list)
    perplexity: dict[str, Perplexity] = field(default_factory=dict)
    mc_correct: dict[str, list[bool]] = field(default_factory=dict)
    mc_truncated: dict[str, int] = field(default_factory=dict)  # questions whose context was cut to fit
    forecast_kl: list[list[AnswerKL]] = field(default_factory=list)  # per SFT prompt, its scored answers
    own_samples: dict[str, list[list[str]]] = field(default_factory=dict)  # measure -> K samples per own prompt
    own_scores: dict[str, Any] = field(default_factory=dict)  # measure -> what its ``score`` returned for this model


@dataclass
class LoadedModel:
    """One model of the audit while it is loaded, handed to a measure that scores each model itself
    (``Measure.score``). ``cache_key`` names the model and the precision it runs in, as the sample cache's
    key does; ``cache_dir`` is the audit's cache (:func:`sftlab.audit.score_cache.cached_scores`)."""

    name: str
    path: str
    model: Any  # a transformers PreTrainedModel, in eval mode on the audit's device
    tokenizer: PreTrainedTokenizerBase
    cfg: AuditConfig
    cache_dir: Path
    cache_key: str


@dataclass
class AuditContext:
    """What a measure can read: the config, the models and every model's outputs.

    ``samples[model][p]`` are the K sampled texts for prompt p, ``greedy[model][p]`` the greedy answer;
    ``messages[p]`` is prompt p as chat messages. ``results`` holds the sections' data built so far, by
    section key, so a measure can build on those before it. The fields after ``results`` are filled by the
    audit for its own measures; a context built by hand (a test, a notebook) may leave them empty.
    """

    cfg: AuditConfig
    out_dir: Path
    base: str
    models: dict[str, str]  # display name -> path, base first
    messages: list[list[Any]]
    samples: dict[str, list[list[str]]]
    greedy: dict[str, list[str]]
    results: dict[str, Any] = field(default_factory=dict)
    inputs: Inputs | None = None
    runs: dict[str, ModelRun] = field(default_factory=dict)
    shifts: dict[str, list[AnswerShift]] = field(default_factory=dict)  # tuned model -> its answers under the base
    tokenizer: PreTrainedTokenizerBase | None = None  # the base's
    colors: dict[str, Any] = field(default_factory=dict)  # model -> plot colour
    embeddings: dict[str, list[np.ndarray]] | None = None  # model -> per prompt, its samples' embeddings
    prompt_embeddings: np.ndarray | None = None
    embedder: str | None = None  # the sentence-embedding model's description, None without one

    @property
    def tuned(self) -> list[str]:
        """Display names of the tuned models, in the order given."""
        return [m for m in self.models if m != self.base]

    def own_samples(self, measure: str) -> dict[str, list[list[str]]]:
        """model -> K samples per prompt of ``measure``'s own prompt set (see ``Measure.prompts``)."""
        return {m: r.own_samples.get(measure, []) for m, r in self.runs.items()}

    def own_scores(self, measure: str) -> dict[str, Any]:
        """model -> what ``measure``'s ``score`` returned for it (see ``Measure.score``)."""
        return {m: r.own_scores[measure] for m, r in self.runs.items() if measure in r.own_scores}
