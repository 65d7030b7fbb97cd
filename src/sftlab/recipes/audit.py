"""``sftlab audit``: compare a base model with one or more tuned models and write the report.

Reads only model dirs (full or PEFT adapter) and data files. Steps, per model: sample K answers per
prompt and one greedy answer (cached under ``out/cache``), perplexity on the reference corpora,
multiple-choice benchmarks, greedy answers on the eval set; per tuned model, the shift of its greedy
answers under the base (both models in memory, one at a time beside the base) and, with ``sft_data``, the
forgetting forecast (its KL to the base along its own answers to the SFT prompts). Then the metric tables,
the sections and the files: ``report.html``, ``report.md``, ``report.json``, ``token_view.html``,
``plots/*.png``.
"""

from __future__ import annotations

import gc
import html
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sftlab.audit import copying, diversity, forgetting, shift, style, suites, task
from sftlab.audit.embed import Embedder, resolve_embedding_model
from sftlab.audit.forecast import AnswerKL, forecast_table, score_forecast, scored_continuation
from sftlab.audit.report import plots
from sftlab.audit.report.html import render_html
from sftlab.audit.report.json_report import build_report, write_json
from sftlab.audit.report.markdown import render_markdown
from sftlab.audit.report.section import AuditContext, Section, SectionProvider
from sftlab.audit.report.sections import (
    adherence_fell,
    copying_section,
    diversity_section,
    forecast_section,
    forgetting_section,
    sft_style_corpora,
    shift_section,
    style_section,
    task_section,
)
from sftlab.audit.report.token_view import answers_html, legend_html, token_view_page
from sftlab.audit.score_cache import cached_scores
from sftlab.config import AuditConfig
from sftlab.data.readers import read_prompts, read_records, read_texts
from sftlab.data.records import Message
from sftlab.data.tokenize import encode_prompt, leading_special_ids, render_prompt
from sftlab.errors import UserError
from sftlab.models.adapter_fit import check_adapter_fits
from sftlab.models.builtin import resolve_model_source
from sftlab.models.generate import generate
from sftlab.models.cache import cache_root
from sftlab.models.load import (
    adapter_base_path,
    adapter_is_mergeable,
    autocast,
    context_limit,
    is_adapter_dir,
    load_config,
    load_model,
    load_tokenizer,
    resolve_dtype,
    weights_and_autocast,
)
from sftlab.models.reference import model_fingerprint, resolve_model
from sftlab.train.weight_rounding import dither_in_place, resolve_rounding

# Answers shown inline in report.html per tuned model (all of them are in token_view.html).
INLINE_ANSWERS = 3


def _auto_name(path: str) -> str:
    """The dir's name, or ``parent/name`` for generic names like ``model``."""
    p = Path(path.rstrip("/"))
    name = f"{p.parent.name}/{p.name}" if p.name in ("model", "adapter", "merged") and p.parent.name else p.name
    return name or path


def split_label(entry: str) -> tuple[str | None, str]:
    """``NAME=DIR`` -> (NAME, DIR); a plain ``DIR`` (or an existing path that holds ``=``) -> (None, DIR)."""
    name, sep, path = entry.partition("=")
    if not sep or Path(entry).exists():
        return None, entry
    if not name or not path:
        raise UserError(f"tuned model {entry!r}: expected NAME=DIR with both parts, or a plain DIR")
    return name, path


def model_names(base: str, tuned: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """Display name -> path, base first. A tuned model is labelled by the NAME it was given (``NAME=DIR``
    or a mapping), else by its dir's name (``parent/name`` for generic names like ``model``).

    Two models with one label would be merged in every table, so a collision is a user error.
    """
    entries = list(tuned.items()) if isinstance(tuned, Mapping) else [split_label(e) for e in tuned]
    names: dict[str, str] = {_auto_name(base): base}
    for given, path in entries:
        name = given or _auto_name(path)
        if name in names:
            hint = "" if given else f"; name them, e.g. --tuned NAME={path}"
            raise UserError(f"two models of the audit are both labelled {name!r} ({names[name]} and {path}){hint}")
        names[name] = path
    return names


def _stem_names(paths: Sequence[str]) -> list[str]:
    names: list[str] = []
    for path in paths:
        stem, unique, n = Path(path).stem, Path(path).stem, 2
        while unique in names:
            unique, n = f"{stem}#{n}", n + 1
        names.append(unique)
    return names


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _check_vocab(base_tok: PreTrainedTokenizerBase, tok: PreTrainedTokenizerBase, path: str) -> None:
    # Shift ranks compare token ids across the two models, so they must mean the same strings.
    if base_tok.get_vocab() != tok.get_vocab():
        raise UserError(f"{path}: its tokenizer's vocabulary differs from the base's; the audit compares token ids, "
                        "so base and tuned models must share one tokenizer")


@dataclass
class EvalItem:
    """One eval-set item: the prompt turns and the reference answer."""

    messages: list[Message]
    reference: str


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


@dataclass
class Inputs:
    """Every data file of the audit, read and checked before any model is loaded."""

    messages: list[list[Message]]
    references: dict[str, list[str]]
    benchmarks: dict[str, list[forgetting.MCItem]]
    eval_items: list[EvalItem]
    sft_examples: list[copying.SFTExample]
    sft_rejected: int = 0
    sft_prompts: list[list[Message]] = field(default_factory=list)  # for the forgetting forecast
    suites: list[str] = field(default_factory=list)  # the built-in probe suites used
    sources: dict[str, Any] = field(default_factory=dict)  # input -> the file(s) it was read from (the report's)


def read_inputs(cfg: AuditConfig) -> Inputs:
    """Read prompts, corpora, benchmarks, eval set and SFT data (bad input fails here, fast).

    The built-in probe suites (:mod:`sftlab.audit.suites`) fill what the user's files leave open: the chat
    suite's first ``suite_items.chat_prompts`` items are the prompts and the eval set unless ``prompts`` /
    ``eval_set`` is given; text and knowledge suites add their first ``suite_items`` paragraphs / items to the
    user's corpora and benchmarks.
    """
    gave_files = bool(cfg.prompts or cfg.eval_set or cfg.reference or cfg.benchmark)
    chosen = suites.selected_suites(cfg.suites, gave_files)
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
    perplexity: dict[str, forgetting.Perplexity] = field(default_factory=dict)
    mc_correct: dict[str, list[bool]] = field(default_factory=dict)
    forecast_kl: list[list[AnswerKL]] = field(default_factory=list)  # per SFT prompt, its scored answers


class _Progress:
    """Rich progress bars, one per step, labelled with the model."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def step(self, label: str, total: int) -> Callable[[int], None]:
        task_id = self.progress.add_task(label, total=total)
        return lambda n: self.progress.advance(task_id, n)


def run_model(model: PreTrainedModel, tok: PreTrainedTokenizerBase, name: str, path: str, inputs: Inputs,
              cfg: AuditConfig, bars: _Progress, cache_dir: Path, max_length: int, precision_tag: str = "") -> ModelRun:
    """Sampling, greedy answers, perplexity, benchmarks and eval-set answers of one model.

    ``max_length`` bounds every sequence (prompt + answer, perplexity windows); ``precision_tag`` joins the
    sample cache key (empty for fp32, so fp32 caches stay valid).
    """
    s = cfg.sampling
    fingerprint = model_fingerprint(path) + precision_tag
    prompt_ids = [encode_prompt(tok, m) for m in inputs.messages]
    sampled = generate(model, tok, prompt_ids, s, greedy=False, max_length=max_length, cache_dir=cache_dir,
                       fingerprint=fingerprint, on_prompts_done=bars.step(f"{name}: sampling K={s.num_samples}",
                                                                          len(prompt_ids)))
    greedy = generate(model, tok, prompt_ids, s, greedy=True, max_length=max_length, cache_dir=cache_dir,
                      fingerprint=fingerprint, on_prompts_done=bars.step(f"{name}: greedy answers", len(prompt_ids)))
    run = ModelRun(prompt_ids=[p[-max(1, max_length - s.max_new_tokens):] for p in prompt_ids],
                   samples=sampled.texts, greedy=[g[0] for g in greedy.texts],
                   greedy_ids=[g[0] for g in greedy.token_ids], first_sample_ids=[g[0] for g in sampled.token_ids],
                   sample_lengths=[[len(ids) for ids in g] for g in sampled.token_ids])
    if inputs.eval_items:
        eval_ids = [encode_prompt(tok, it.messages) for it in inputs.eval_items]
        out = generate(model, tok, eval_ids, s, greedy=True, max_length=max_length, cache_dir=cache_dir,
                       fingerprint=fingerprint, on_prompts_done=bars.step(f"{name}: eval set", len(eval_ids)))
        run.eval_greedy = [g[0] for g in out.texts]
    # A sweep's audits all score the same base on the same corpora and benchmarks: those scores are cached.
    for corpus, texts in inputs.references.items():
        n = _n_windows(tok, texts, max_length)
        done = bars.step(f"{name}: perplexity {corpus}", n)
        run.perplexity[corpus] = cached_scores(
            cache_dir, {"kind": "perplexity", "model": fingerprint, "texts": list(texts), "max_length": max_length,
                        "batch_size": s.batch_size},
            lambda: forgetting.perplexity(model, tok, texts, max_length, s.batch_size, done),
            asdict, lambda d: forgetting.Perplexity(**d), lambda: done(n))
    for bench, items in inputs.benchmarks.items():
        n = sum(len(i.choices) for i in items)
        done = bars.step(f"{name}: {bench}", n)
        scores = cached_scores(
            cache_dir, {"kind": "choices", "model": fingerprint, "items": [asdict(i) for i in items],
                        "batch_size": s.batch_size},
            lambda: forgetting.choice_scores(model, tok, items, s.batch_size, done),
            lambda sc: [[asdict(c) for c in per] for per in sc],
            lambda d: [[forgetting.ChoiceScore(**c) for c in per] for per in d], lambda: done(n))
        run.mc_correct[bench] = forgetting.mc_correct(items, scores, cfg.mc_score)
    return run


def _n_windows(tok: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> int:
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    return sum(len(forgetting.windows(bos + ids, max_length))
               for ids in tok(list(texts), add_special_tokens=False)["input_ids"])


def shift_contexts(cfg: AuditConfig, base_tok: PreTrainedTokenizerBase, messages: list[list[Message]],
                   tuned_ids: list[list[int]], max_length: int) -> list[list[int]]:
    """What the base sees before each tuned answer: the tuned model's own prompt ids, or a plain prompt."""
    if cfg.shift_template == "same":
        return tuned_ids
    lead = leading_special_ids(base_tok)
    limit = max(1, max_length - cfg.sampling.max_new_tokens)
    return [(lead + base_tok(shift.plain_prompt(m), add_special_tokens=False)["input_ids"])[-limit:] for m in messages]


def forecast_run(cfg: AuditConfig, prompts: list[list[Message]], model: PreTrainedModel, tok: PreTrainedTokenizerBase,
                 base_model: PreTrainedModel, base_tok: PreTrainedTokenizerBase, name: str, path: str,
                 bars: _Progress, cache_dir: Path, max_length: int, precision_tag: str = "") -> list[list[AnswerKL]]:
    """The forgetting forecast's raw scores: the tuned model samples answers to the SFT prompts (cached like
    every sample, ``precision_tag`` in the key as in :func:`run_model`), then both models are teacher-forced
    along them (see :mod:`sftlab.audit.forecast`).

    The base reads each prompt as it does for the shift (``shift_template``). Returns, per prompt, the
    per-position KL of each of its :func:`forecast_samples_per_prompt` answers.
    """
    s = cfg.sampling.model_copy(update={"num_samples": forecast_samples_per_prompt(cfg, len(prompts))})
    prompt_ids = [encode_prompt(tok, m) for m in prompts]
    sampled = generate(model, tok, prompt_ids, s, greedy=False, max_length=max_length, cache_dir=cache_dir,
                       fingerprint=model_fingerprint(path) + precision_tag,
                       on_prompts_done=bars.step(f"{name}: forecast samples (SFT prompts)", len(prompt_ids)))
    tuned_ctx = [p[-max(1, max_length - s.max_new_tokens):] for p in prompt_ids]
    base_ctx = shift_contexts(cfg, base_tok, prompts, tuned_ctx, max_length)
    owner = [p for p, answers in enumerate(sampled.token_ids) for _ in answers]
    conts = [scored_continuation(a, s.max_new_tokens, base_tok.pad_token_id) for answers in sampled.token_ids
             for a in answers]
    scores = score_forecast(model, base_model, [tuned_ctx[p] for p in owner], [base_ctx[p] for p in owner], conts,
                            base_tok.pad_token_id, s.batch_size, bars.step(f"{name}: forecast KL", len(conts)))
    per_prompt: list[list[AnswerKL]] = [[] for _ in prompts]
    for p, score in zip(owner, scores):
        per_prompt[p].append(score)
    return per_prompt


def forecast_samples_per_prompt(cfg: AuditConfig, n_prompts: int) -> int:
    """``forecast_samples``, raised so that the forecast has at least ``forecast_min_answers`` answers in all
    (an SFT set with one instruction would otherwise rest on a single sampled answer)."""
    return max(cfg.forecast_samples, math.ceil(cfg.forecast_min_answers / max(n_prompts, 1)))


def _release_gpu_memory(device: str) -> None:
    # Only a GPU needs this: a collection pass costs about a second per call with models in memory.
    if device.startswith("cuda"):
        gc.collect()
        torch.cuda.empty_cache()


def check_model_dir(path: str) -> None:
    """A UserError for a local dir that is neither a model (config.json) nor a PEFT adapter (adapter_config.json),
    pointing at its checkpoint-N dirs when it is a trainer's output dir."""
    p = Path(path)
    if not p.is_dir() or (p / "config.json").is_file() or is_adapter_dir(p):
        return
    checkpoints = sorted((c for c in p.glob("checkpoint-*") if c.name.removeprefix("checkpoint-").isdigit()),
                         key=lambda c: int(c.name.removeprefix("checkpoint-")))
    hint = (f" It holds a trainer's checkpoints: pass one of them, e.g. the last, {checkpoints[-1]}"
            if checkpoints else "")
    raise UserError(f"{path} is neither a model dir (no config.json) nor a PEFT adapter dir (no "
                    f"adapter_config.json), so there is nothing to audit in it.{hint}")


def template_notes(cfg: AuditConfig, models: Mapping[str, str], base_tok: PreTrainedTokenizerBase) -> dict[str, str]:
    """tuned model -> a note, for each whose chat template differs from the base's (a trainer may save its own).
    An adapter that does not fit the base is a UserError here, before any model runs.

    Each model is prompted through its own tokenizer's template, as it was trained to be read; the note says so.
    """
    notes = {}
    for name, path in list(models.items())[1:]:
        check_model_dir(path)
        if is_adapter_dir(path):  # an adapter made for another model fails now, not after the base has run
            check_adapter_fits(path, cfg.base, load_config(cfg.base, cfg.trust_remote_code), adapter_base_path(path))
        tok = load_tokenizer(path, cfg.trust_remote_code, base=cfg.base)
        if getattr(tok, "chat_template", None) != getattr(base_tok, "chat_template", None):
            notes[name] = (f"{name}: its chat template differs from the base's; each model is prompted with its "
                           "own template")
    return notes


def audit_precision(cfg: AuditConfig, device: str) -> torch.dtype:
    """The compute dtype of the audit: ``cfg.dtype``, with ``auto`` decided for the base model on ``device``
    (:func:`sftlab.models.load.resolve_dtype`: bf16 on a bf16 GPU, or on a CPU with bf16 units for a wide
    enough model)."""
    return resolve_dtype(cfg.dtype, device, load_config(cfg.base, cfg.trust_remote_code))


def run_models(cfg: AuditConfig, inputs: Inputs, models: dict[str, str], base_tok: PreTrainedTokenizerBase,
               device: str, bars: _Progress, cache_dir: Path) -> tuple[dict[str, ModelRun], dict[str, list[shift.AnswerShift]]]:
    """Every model's outputs, and each tuned model's shift under the base.

    The base stays loaded throughout; tuned models are loaded one at a time beside it. Every model runs
    in the precision chosen for the base (:func:`audit_precision`), so their figures compare like with like.
    """
    weights, amp = weights_and_autocast(audit_precision(cfg, device), device)
    dithered = cfg.bf16_weight_rounding == "dithered"  # run_audit resolved auto
    # The sample cache must not hand fp32 samples to a bf16 audit (or back): the key names the precision.
    tag = "" if amp is None and weights == torch.float32 else f"-{str(amp or weights).removeprefix('torch.')}"
    tag += "-dithered" if dithered else ""

    def load(path: str, merge_adapter: bool = False) -> torch.nn.Module:
        """A model in the audit's precision; dithered in fp32 first, then cast (exactly) when so asked."""
        model = load_model(path, torch.float32 if dithered else weights, device, cfg.trust_remote_code,
                           merge_adapter=merge_adapter, base=cfg.base)
        if dithered:
            dither_in_place(model)
            model.to(weights)
        return model

    base, *tuned = models
    runs: dict[str, ModelRun] = {}
    shifts: dict[str, list[shift.AnswerShift]] = {}
    base_model = load(cfg.base)
    base_limit = context_limit(base_model, cfg.max_length)
    with autocast(amp, device):
        runs[base] = run_model(base_model, base_tok, base, cfg.base, inputs, cfg, bars, cache_dir, base_limit, tag)
    for name in tuned:
        path = models[name]
        tok = load_tokenizer(path, cfg.trust_remote_code, base=cfg.base)
        _check_vocab(base_tok, tok, path)
        # An adapter runs on the audit's base (not necessarily the one it records): that base joins its cache key.
        model_tag = tag + (f"@{model_fingerprint(cfg.base)}" if is_adapter_dir(path) else "")
        # A LoRA-style adapter is folded into its weights: the same function, and generation no longer pays
        # for the adapter's extra matmuls at every step (the real demo's LoRA audit sampled 1.4x slower).
        merge = is_adapter_dir(path) and adapter_is_mergeable(path)
        model = load(path, merge_adapter=merge)
        limit = context_limit(model, base_limit)
        with autocast(amp, device):
            runs[name] = run = run_model(model, tok, name, path, inputs, cfg, bars, cache_dir, limit, model_tag)
            answers = run.greedy_ids if cfg.shift_answers == "greedy" else run.first_sample_ids
            shifts[name] = shift.score_shift(
                model, base_model, run.prompt_ids, shift_contexts(cfg, base_tok, inputs.messages, run.prompt_ids, limit),
                answers, base_tok.pad_token_id, cfg.sampling.batch_size,
                bars.step(f"{name}: shift under the base", len(answers)))
            if inputs.sft_prompts:
                run.forecast_kl = forecast_run(cfg, inputs.sft_prompts, model, tok, base_model, base_tok, name, path,
                                               bars, cache_dir, limit, model_tag)
        del model
        _release_gpu_memory(device)
    del base_model
    _release_gpu_memory(device)
    return runs, shifts


def run_audit(cfg: AuditConfig, extra_sections: Sequence[SectionProvider] = ()) -> Path:
    """Audit ``cfg.tuned`` against ``cfg.base``; returns the path of report.html.

    ``extra_sections`` are called with the :class:`AuditContext` after the audit's own sections; each
    returns a Section (added to every report file) or None.
    """
    started = time.perf_counter()
    # Resolved once here; a base given as a folder plus gguf_file is labelled by its converted dir.
    base_ref = resolve_model(cfg.base, cfg.gguf_file)
    models = model_names(cfg.base if cfg.gguf_file is None else base_ref.path, cfg.tuned)  # colliding labels fail before any data is read
    cfg = cfg.model_copy(update={"base": base_ref.path, "gguf_file": None})
    out = Path(cfg.out)
    device = _device(cfg.device)
    precision = audit_precision(cfg, device)
    if cfg.bf16_weight_rounding == "dithered" and precision != torch.bfloat16:
        raise UserError(f"bf16_weight_rounding: dithered applies to a bf16 audit, and dtype: {cfg.dtype} audits "
                        f"in {str(precision).removeprefix('torch.')} here; set dtype: bfloat16, or drop the key")
    cfg = cfg.model_copy(update={"bf16_weight_rounding": resolve_rounding(cfg.bf16_weight_rounding,
                                                                          precision == torch.bfloat16)})
    inputs = read_inputs(cfg)
    console = Console(stderr=True)
    if inputs.sft_rejected:
        console.print(f"[yellow]sft_data: {inputs.sft_rejected} bad records skipped for pattern copying "
                      f"(`sftlab data check {cfg.sft_data}` lists them)[/yellow]")
    base = next(iter(models))
    base_tok = load_tokenizer(cfg.base, cfg.trust_remote_code)
    templates = template_notes(cfg, models, base_tok)
    for note in templates.values():
        console.print(f"[yellow]{note}[/yellow]")
    loading = time.perf_counter()
    embedding_path = resolve_embedding_model(cfg.embedding_model)
    embedder = Embedder(embedding_path, device) if embedding_path else None
    embedder_load_s = time.perf_counter() - loading
    out.mkdir(parents=True, exist_ok=True)  # only now: an audit refused on its inputs leaves no empty dir behind
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console)
    with progress:
        bars = _Progress(progress)
        runs, shifts = run_models(cfg, inputs, models, base_tok, device, bars, audit_cache_dir(cfg))
        model_s = time.perf_counter() - started
        embedded = time.perf_counter()
        embeddings = {name: [embedder.embed(t) for t in run.samples] for name, run in runs.items()} if embedder else None
        prompt_embeddings = embedder.embed([m[-1].content for m in inputs.messages]) if embedder else None
        embedding_s = time.perf_counter() - embedded + embedder_load_s
        outputs = {
            name: diversity.ModelOutputs(
                texts=run.samples,
                tokens=[base_tok(t, add_special_tokens=False)["input_ids"] for t in run.samples],
                embeddings=embeddings[name] if embeddings else None)
            for name, run in runs.items()
        }
        scoring = bars.step("diversity metrics", len(outputs))
        scores = {}
        for name, o in outputs.items():
            scores[name] = diversity.score_outputs(o, len(base_tok))
            scoring(1)
        styled = time.perf_counter()
        style_data = style_data_of(cfg, inputs, runs, shifts, base, base_tok, embeddings, prompt_embeddings)
        style_s = time.perf_counter() - styled
        bars.step("style, adherence, surface form", 1)(1)

    ctx = AuditContext(cfg=cfg, out_dir=out, base=base, models=models, messages=inputs.messages,
                       samples={n: r.samples for n, r in runs.items()}, greedy={n: r.greedy for n, r in runs.items()})
    colors = plots.model_colors(list(models), base)
    sections = build_sections(cfg, ctx, inputs, runs, shifts, scores, base_tok, colors, style_data,
                              embedder.description if embedder else None)
    for provider in extra_sections:
        section = provider(ctx)
        if section is not None:
            sections.append(section)
    tokens = sum(len(ids) for r in runs.values() for ids in r.greedy_ids)
    meta = {"sftlab_version": _version(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": device, "dtype": str(precision).removeprefix("torch."),
            "weight_rounding": cfg.bf16_weight_rounding if precision == torch.bfloat16 else None,
            "seconds": round(time.perf_counter() - started, 2),
            "model_seconds": round(model_s, 2), "embedding_seconds": round(embedding_s, 2),
            "style_seconds": round(style_s, 2), "prompts": len(inputs.messages),
            "greedy_tokens": tokens, "suites": inputs.suites, "inputs": inputs.sources,
            "chat_templates": templates}
    write_reports(out, sections, ctx, colors, meta, shifts, base_tok)
    console.print(f"[bold]audit report[/bold]: {out / 'report.html'}")
    return out / "report.html"


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


def style_data_of(cfg: AuditConfig, inputs: Inputs, runs: dict[str, ModelRun],
                  shifts: dict[str, list[shift.AnswerShift]], base: str, base_tok: PreTrainedTokenizerBase,
                  embeddings: dict[str, list[np.ndarray]] | None, prompt_embeddings: np.ndarray | None) -> dict[str, Any]:
    """The style section's table (:func:`sftlab.audit.style.style_table`) from the models' samples and shifts.

    The base's log-probability of a tuned answer is the mean over its tokens of log p_base, from the shift
    scores (probabilities clipped at 1e-30, so one that underflowed to 0 stays finite).
    """
    sft = [ex.response for ex in inputs.sft_examples]
    sft_lengths = [len(ids) for ids in base_tok(sft, add_special_tokens=False)["input_ids"]] if sft else []
    adherence = ({m: style.adherence_scores(prompt_embeddings, embeddings[m]) for m in runs}
                 if embeddings is not None and prompt_embeddings is not None else None)
    logprob = {m: [float(np.mean(np.log(np.clip(a.base_prob, 1e-30, None)))) if len(a.base_prob) else float("nan")
                   for a in answers] for m, answers in shifts.items()}
    return style.style_table({m: r.samples for m, r in runs.items()}, {m: r.sample_lengths for m, r in runs.items()},
                             base, cfg.sampling.max_new_tokens, sft, sft_lengths, adherence, logprob,
                             inputs.references, cfg.bootstrap_samples, cfg.sampling.seed)


def build_sections(cfg: AuditConfig, ctx: AuditContext, inputs: Inputs, runs: dict[str, ModelRun],
                   shifts: dict[str, list[shift.AnswerShift]], scores: dict[str, diversity.DiversityScores],
                   base_tok: PreTrainedTokenizerBase, colors: dict[str, Any], style_data: dict[str, Any],
                   embedder: str | None = None) -> list[Section]:
    """The audit's own sections, in reading order; each metric table is also put in ``ctx.results``.

    The style section comes first, so the headline leads with style capture, adherence and surface form.
    """
    base = ctx.base
    sections = [style_section(style_data, base, embedder)]
    ctx.results["style"] = sections[0].data
    table = diversity.diversity_table(scores, base, cfg.bootstrap_samples, cfg.sampling.seed)
    ctx.results["diversity"] = table
    sections.append(diversity_section(table, base, adherence_fell(style_data)))

    summaries = {m: shift.summarize_shift(s, base_tok) for m, s in shifts.items()}
    ctx.results["shift"] = summaries
    displayed = [m[-1].content for m in inputs.messages]
    excerpt = legend_html() + "".join(
        f"<h3>{html.escape(m)}</h3>" + answers_html(displayed, s, base_tok, INLINE_ANSWERS) for m, s in shifts.items())
    sections.append(shift_section(summaries, colors, excerpt, cfg.shift_template, cfg.shift_answers))

    if inputs.sft_examples:
        prompts = [render_prompt(base_tok, m) for m in inputs.messages]
        tuned = {m: [(runs[m].greedy[i], runs[m].greedy_ids[i], list(s.classes == shift.SHIFTED))
                     for i, s in enumerate(shifts[m])] for m in shifts}
        data = copying.copying_table(copying.SFTIndex(inputs.sft_examples), base_tok, prompts,
                                     list(zip(runs[base].greedy, runs[base].greedy_ids)), tuned, cfg.copying_k)
        data["sft_records_rejected"] = inputs.sft_rejected
        ctx.results["copying"] = data
        sections.append(copying_section(data))

    if inputs.references or inputs.benchmarks:
        data = forgetting.forgetting_table(
            {c: {m: r.perplexity[c] for m, r in runs.items()} for c in inputs.references},
            {b: {m: r.mc_correct[b] for m, r in runs.items()} for b in inputs.benchmarks},
            base, cfg.bootstrap_samples, cfg.sampling.seed, mc_score=cfg.mc_score)
        ctx.results["forgetting"] = data
        sections.append(forgetting_section(data, base, colors, sft_style_corpora(style_data)))

    forecasts = {m: r.forecast_kl for m, r in runs.items() if r.forecast_kl}
    if forecasts:
        data = forecast_table(forecasts, len(inputs.sft_prompts),
                              forecast_samples_per_prompt(cfg, len(inputs.sft_prompts)), cfg.shift_template,
                              cfg.bootstrap_samples, cfg.sampling.seed)
        ctx.results["forecast"] = data
        sections.append(forecast_section(data))

    if inputs.eval_items:
        data = task.task_table({m: r.eval_greedy for m, r in runs.items()},
                               [it.reference for it in inputs.eval_items], base, cfg.bootstrap_samples,
                               cfg.sampling.seed)
        ctx.results["task"] = data
        sections.append(task_section(data, base))
    return sections


def write_reports(out: Path, sections: list[Section], ctx: AuditContext, colors: dict[str, Any],
                  meta: dict[str, Any], shifts: dict[str, list[shift.AnswerShift]],
                  tok: PreTrainedTokenizerBase) -> None:
    """report.html, report.md, report.json, token_view.html and plots/."""
    s = ctx.cfg.sampling
    subtitle = (f"{len(ctx.messages)} prompts · K={s.num_samples} samples at temperature {s.temperature}, "
                f"top-p {s.top_p}, top-k {s.top_k or 'off'}, up to {s.max_new_tokens} new tokens · seed {s.seed}")
    subtitle += inputs_line(meta.get("suites", []), meta.get("inputs", {}))
    subtitle += "".join(f" · {note}" for note in meta.get("chat_templates", {}).values())
    findings = [f for sec in sections for f in sec.findings]
    config = ctx.cfg.model_dump(mode="json")
    (out / "plots").mkdir(exist_ok=True)
    for sec in sections:
        for name, png in sec.images.items():
            (out / "plots" / name).write_bytes(png)
    html_text = render_html(sections, findings, ctx.models, ctx.base, colors, subtitle,
                            yaml.safe_dump(config, sort_keys=False), meta["sftlab_version"], meta["created"])
    (out / "report.html").write_text(html_text, encoding="utf-8")
    (out / "report.md").write_text(render_markdown(sections, findings, ctx.models, ctx.base, subtitle),
                                   encoding="utf-8")
    write_json(build_report(sections, findings, config, ctx.models, ctx.base, meta), out / "report.json")
    displayed = [m[-1].content for m in ctx.messages]
    (out / "token_view.html").write_text(
        token_view_page("Token shift under the base model", {m: (displayed, sh) for m, sh in shifts.items()}, tok),
        encoding="utf-8")


def inputs_line(suite_names: Sequence[str], sources: Mapping[str, Any]) -> str:
    """`` · suites: chat, text · files: prompts a.jsonl, ...``: what the audit read, for the report's subtitle."""
    parts = []
    for key, value in sources.items():
        for path in ([value] if isinstance(value, str) else value or []):
            parts.append(f"{key} {path}")
    return (f" · suites: {', '.join(suite_names) or 'none'}" if suite_names is not None else "") + \
        (f" · files: {'; '.join(parts)}" if parts else "")


def _version() -> str:
    try:
        return version("sftlab")
    except PackageNotFoundError:
        return "unknown"
