"""The audit's inputs: prompts, reference corpora, benchmarks, eval set and SFT data, from the user's files and
the built-in probe suites (:mod:`sftlab.audit.suites`), read and checked before any model loads; and where the
audit caches every model's samples and scores.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sftlab.audit import copying, forgetting, suites
from sftlab.audit.measures.context import EvalItem, Inputs
from sftlab.config import AuditConfig
from sftlab.data.readers import read_prompts, read_records, read_texts
from sftlab.data.records import Message
from sftlab.errors import UserError
from sftlab.models.cache import cache_root


def _stem_names(paths: Sequence[str]) -> list[str]:
    names: list[str] = []
    for path in paths:
        stem, unique, n = Path(path).stem, Path(path).stem, 2
        while unique in names:
            unique, n = f"{stem}#{n}", n + 1
        names.append(unique)
    return names


def read_eval_set(path: str) -> list[EvalItem]:
    """Prompt/completion or conversation records; the last assistant turn is the reference."""
    items = []
    for record in read_records([path], strict=True).records:
        if record.kind == "text":
            raise UserError(f"{record.origin}: the eval set needs prompts with reference answers, not plain text")
        turns = record.as_messages()
        while turns and turns[-1].role != "assistant":
            turns.pop()
        if len(turns) < 2:
            raise UserError(f"{record.origin}: no assistant turn to use as the reference")
        items.append(EvalItem(turns[:-1], turns[-1].content))
    if not items:
        raise UserError(f"{path}: no eval items")
    return items


def read_sft_examples(path: str) -> tuple[list[copying.SFTExample], int]:
    """SFT records as (prompt, response) texts for retrieval, and the number of records rejected.

    Bad records are skipped, not fatal (training quarantined them too); the count is reported.
    """
    result = read_records([path])
    examples = []
    for record in result.records:
        if record.kind == "text":
            continue
        turns = record.as_messages()
        response = "\n".join(m.content for m in turns if m.role == "assistant")
        prompt = "\n".join(m.content for m in turns if m.role != "assistant")
        examples.append(copying.SFTExample(prompt, response, str(record.origin)))
    if not examples:
        raise UserError(f"{path}: no SFT examples with a response (needed for pattern copying)")
    return examples, len(result.rejected)


def chosen_suites(cfg: AuditConfig) -> list[suites.Suite]:
    """The probe suites this audit runs (:func:`sftlab.audit.suites.selected_suites`)."""
    gave_files = bool(cfg.prompts or cfg.eval_set or cfg.reference or cfg.benchmark)
    return suites.selected_suites(cfg.suites, gave_files)


def read_inputs(cfg: AuditConfig) -> Inputs:
    """Read prompts, corpora, benchmarks, eval set and SFT data (bad input fails here, fast).

    The built-in probe suites (:mod:`sftlab.audit.suites`) fill what the user's files leave open: the chat
    suite's first ``suite_items.chat_prompts`` items are the prompts and the eval set unless ``prompts`` /
    ``eval_set`` is given; text and knowledge suites add their first ``suite_items`` paragraphs / items to the
    user's corpora and benchmarks.
    """
    chosen = chosen_suites(cfg)
    shipped = suites.suite_files(chosen)
    n = cfg.suite_items
    prompts_file = cfg.prompts or (str(shipped.prompts) if shipped.prompts else None)
    if prompts_file is None:
        raise UserError("the audit samples answers to prompts: give --prompts FILE, or choose the chat suite "
                        "(--suite chat,...), or leave out --suite and the data files to run the default suites")
    messages = read_prompts(prompts_file)
    limit = cfg.max_prompts if cfg.max_prompts is not None else (None if cfg.prompts else n.chat_prompts)
    messages = messages[:limit] if limit is not None else messages
    ref_files = [*cfg.reference, *map(str, shipped.references)]
    bench_files = [*cfg.benchmark, *map(str, shipped.benchmarks)]
    user_refs, user_benches = set(cfg.reference), set(cfg.benchmark)
    references = {name: read_texts(p) if p in user_refs else read_texts(p)[: n.text_paragraphs]
                  for name, p in zip(_stem_names(ref_files), ref_files)}
    benchmarks = {name: forgetting.read_multiple_choice(p) if p in user_benches
                  else forgetting.read_multiple_choice(p)[: n.knowledge_items]
                  for name, p in zip(_stem_names(bench_files), bench_files)}
    eval_file = cfg.eval_set or (str(shipped.prompts) if shipped.prompts else None)
    eval_items = read_eval_set(eval_file) if eval_file else []
    if not cfg.eval_set:
        # The chat suite's eval items are its prompts: the same turns, so their greedy answers come from the cache.
        eval_items = eval_items[: cfg.max_prompts or n.chat_prompts]
    sft, rejected = read_sft_examples(cfg.sft_data) if cfg.sft_data else ([], 0)
    sources = {"prompts": prompts_file, "eval_set": eval_file, "reference": ref_files, "benchmark": bench_files,
               "sft_data": cfg.sft_data}
    inputs = Inputs(messages, references, benchmarks, eval_items, sft, rejected,
                    suites=[s.name for s in chosen], sources=sources)
    if cfg.sft_data and cfg.forecast_prompts:
        inputs.sft_prompts = read_sft_prompts(cfg.sft_data, cfg.forecast_prompts, cfg.sampling.seed)
    return inputs


def read_sft_prompts(path: str, limit: int, seed: int) -> list[list[Message]]:
    """Up to ``limit`` distinct prompts of an SFT set (each record's turns before its last answer).

    A seeded sample, kept in file order, when there are more: a file sorted by topic would otherwise
    give the forecast only its first topic. Duplicates are dropped so a prompt repeated across many
    records (a generic request) counts once.
    """
    seen: dict[tuple[tuple[str, str], ...], list[Message]] = {}
    for record in read_records([path]).records:
        if record.kind == "text":
            continue
        turns = record.as_messages()
        while turns and turns[-1].role == "assistant":
            turns.pop()
        if turns:
            seen.setdefault(tuple((m.role, m.content) for m in turns), turns)
    prompts = list(seen.values())
    if len(prompts) > limit:
        keep = np.random.default_rng(seed).choice(len(prompts), size=limit, replace=False)
        prompts = [prompts[i] for i in sorted(keep)]
    return prompts


def audit_cache_dir(cfg: AuditConfig) -> Path:
    """Where every model's samples and scores are cached: ``cfg.cache_dir``, else ``$SFTLAB_AUDIT_CACHE``, else
    ``<cache root>/audit`` (``$SFTLAB_CACHE/audit`` or ``~/.cache/sftlab/audit``).

    Outside ``out``, so the next audit of another fine-tune of the same base reads the base's samples, perplexity
    and benchmark scores back instead of recomputing them (entries are keyed by the model's files, the inputs
    and the settings, so sharing is safe).
    """
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    return Path(os.environ["SFTLAB_AUDIT_CACHE"]) if os.environ.get("SFTLAB_AUDIT_CACHE") else cache_root() / "audit"


def inputs_line(suite_names: Sequence[str], sources: Mapping[str, Any]) -> str:
    """`` · suites: chat, text · files: prompts a.jsonl, ...``: what the audit read, for the report's subtitle."""
    parts = []
    for key, value in sources.items():
        for path in ([value] if isinstance(value, str) else value or []):
            parts.append(f"{key} {path}")
    return (f" · suites: {', '.join(suite_names) or 'none'}" if suite_names is not None else "") + \
        (f" · files: {'; '.join(parts)}" if parts else "")
