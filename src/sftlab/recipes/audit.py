"""``sftlab audit``: compare a base model with one or more tuned models and write the report.

Reads only model dirs (full or PEFT adapter) and data files. Steps, per model: sample K answers per
prompt and one greedy answer (cached under ``out/cache``), perplexity on the reference corpora,
multiple-choice benchmarks, greedy answers on the eval set; per tuned model, the shift of its greedy
answers under the base (both models in memory, one at a time beside the base) and, with ``sft_data``, the
forgetting forecast (its KL to the base along its own answers to the SFT prompts). Then every measure of
:mod:`sftlab.audit.measures` builds its section from these outputs, and the files are written:
``report.html``, ``report.md``, ``report.json``, ``token_view.html``, ``plots/*.png``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sftlab.audit import forgetting, shift
from sftlab.audit.embed import Embedder, resolve_embedding_model
from sftlab.audit.forecast import AnswerKL, forecast_samples_per_prompt, score_forecast, scored_continuation
from sftlab.audit.measures import registry
from sftlab.audit.measures.base import Measure
from sftlab.audit.measures.context import AuditContext, Inputs, LoadedModel, ModelRun
from sftlab.audit.report import plots
from sftlab.audit.report.html import render_html
from sftlab.audit.report.json_report import build_report, write_json
from sftlab.audit.report.markdown import render_markdown
from sftlab.audit.report.section import Section
from sftlab.audit.report.token_view import token_view_page
from sftlab.audit.score_cache import cached_scores
from sftlab.config import AuditConfig
from sftlab.data.records import Message
from sftlab.data.tokenize import encode_prompt, leading_special_ids
from sftlab.errors import UserError
from sftlab.io import write_atomic
from sftlab.models.adapter_fit import check_adapter_fits
from sftlab.models.device import resolve_device
from sftlab.models.generate import generate
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
from sftlab.recipes.audit_inputs import audit_cache_dir, chosen_suites, inputs_line, read_inputs
from sftlab.recipes.audit_validate import check_model_dir, validate_inputs
from sftlab.train.weight_rounding import dither_in_place, resolve_rounding

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


def _check_vocab(base_tok: PreTrainedTokenizerBase, tok: PreTrainedTokenizerBase, path: str) -> None:
    # Shift ranks compare token ids across the two models, so they must mean the same strings.
    if base_tok.get_vocab() != tok.get_vocab():
        raise UserError(f"{path}: its tokenizer's vocabulary differs from the base's; the audit compares token ids, "
                        "so base and tuned models must share one tokenizer")


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
    for measure, (prompts, greedy_own) in inputs.own_prompts.items():  # a measure's own prompt set
        own_ids = [encode_prompt(tok, m) for m in prompts]
        own = generate(model, tok, own_ids, s, greedy=greedy_own, max_length=max_length, cache_dir=cache_dir,
                       fingerprint=fingerprint, on_prompts_done=bars.step(f"{name}: {measure} prompts", len(own_ids)))
        run.own_samples[measure] = own.texts
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
                        "batch_size": s.batch_size, "max_length": max_length},
            lambda: forgetting.choice_scores(model, tok, items, s.batch_size, done, max_length),
            lambda sc: [[asdict(c) for c in per] for per in sc],
            lambda d: [[forgetting.ChoiceScore(**c) for c in per] for per in d], lambda: done(n))
        run.mc_correct[bench] = forgetting.mc_correct(items, scores, cfg.mc_score)
        run.mc_truncated[bench] = forgetting.mc_truncated(scores)
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


def _release_gpu_memory(device: str) -> None:
    # Only a GPU needs this: a collection pass costs about a second per call with models in memory.
    if device.startswith("cuda"):
        gc.collect()
        torch.cuda.empty_cache()


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


def score_own(scorers: Sequence[Measure], loaded: LoadedModel, run: ModelRun, bars: _Progress) -> None:
    """Each measure that scores models itself (``Measure.score``) scores this loaded model."""
    for measure in scorers:
        done = bars.step(f"{loaded.name}: {measure.name}", 1)
        run.own_scores[measure.name] = measure.score(loaded)  # type: ignore[misc]
        done(1)


def run_models(cfg: AuditConfig, inputs: Inputs, models: dict[str, str], base_tok: PreTrainedTokenizerBase,
               device: str, bars: _Progress, cache_dir: Path,
               measures: Sequence[Measure] = ()) -> tuple[dict[str, ModelRun], dict[str, list[shift.AnswerShift]]]:
    """Every model's outputs, and each tuned model's shift under the base.

    The base stays loaded throughout; tuned models are loaded one at a time beside it. Every model runs
    in the precision chosen for the base (:func:`audit_precision`), so their figures compare like with like.
    Each of ``measures`` that scores models itself (``Measure.score``) scores every model while it is loaded.
    """
    weights, amp = weights_and_autocast(audit_precision(cfg, device), device)
    dithered = cfg.bf16_weight_rounding == "dithered"  # run_audit resolved auto
    # The sample cache must not hand fp32 samples to a bf16 audit (or back): the key names the precision.
    tag = "" if amp is None and weights == torch.float32 else f"-{str(amp or weights).removeprefix('torch.')}"
    tag += "-dithered" if dithered else ""

    def load(path: str, merge_adapter: bool = False) -> torch.nn.Module:
        """A model in the audit's precision; dithered in fp32 first, then cast (exactly) when so asked."""
        model = load_model(path, torch.float32 if dithered else weights, device, cfg.trust_remote_code,
                           merge_adapter=merge_adapter, allow_pickle=cfg.allow_pickle,
                           base=cfg.base)
        if dithered:
            dither_in_place(model)
            model.to(weights)
        return model

    base, *tuned = models
    scorers = [m for m in measures if m.score is not None]
    runs: dict[str, ModelRun] = {}
    shifts: dict[str, list[shift.AnswerShift]] = {}
    base_model = load(cfg.base)
    base_limit = context_limit(base_model, cfg.max_length)
    with autocast(amp, device):
        runs[base] = run_model(base_model, base_tok, base, cfg.base, inputs, cfg, bars, cache_dir, base_limit, tag)
        score_own(scorers, LoadedModel(base, cfg.base, base_model, base_tok, cfg, cache_dir,
                                       model_fingerprint(cfg.base) + tag), runs[base], bars)
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
            score_own(scorers, LoadedModel(name, path, model, tok, cfg, cache_dir, model_fingerprint(path) + model_tag),
                      run, bars)
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


def run_audit(cfg: AuditConfig, measures: Sequence[str | Measure] = ()) -> Path:
    """Audit ``cfg.tuned`` against ``cfg.base``; returns the path of report.html.

    Every measure of :mod:`sftlab.audit.measures` that is not opt-in runs; ``measures`` adds opt-in ones by
    name (``"world"``, ``"scene_style"``) or measures of the caller's own.
    """
    started = time.perf_counter()
    # Resolved once here; a base given as a folder plus gguf_file is labelled by its converted dir.
    base_ref = resolve_model(cfg.base, cfg.gguf_file)
    models = model_names(cfg.base if cfg.gguf_file is None else base_ref.path, cfg.tuned)  # colliding labels fail before any data is read
    cfg = cfg.model_copy(update={"base": base_ref.path, "gguf_file": None})
    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    suite_measures = [s.measure for s in chosen_suites(cfg) if s.measure]  # the safety suite's measure
    # An unknown measure fails before any data is read too.
    chosen = registry.selected([*measures, *cfg.measures, *suite_measures])
    for measure in chosen:
        registry.settings_of(measure, cfg)  # each measure's own settings, checked before any model loads
    precision = audit_precision(cfg, device)
    if cfg.bf16_weight_rounding == "dithered" and precision != torch.bfloat16:
        raise UserError(f"bf16_weight_rounding: dithered applies to a bf16 audit, and dtype: {cfg.dtype} audits "
                        f"in {str(precision).removeprefix('torch.')} here; set dtype: bfloat16, or drop the key")
    cfg = cfg.model_copy(update={"bf16_weight_rounding": resolve_rounding(cfg.bf16_weight_rounding,
                                                                          precision == torch.bfloat16)})
    inputs = read_inputs(cfg)
    # Every model dir and every prompt's room, checked before the base is sampled (minutes on a real model).
    notes = validate_inputs(cfg, models, {cfg.prompts: inputs.messages, **(
        {cfg.eval_set: [it.messages for it in inputs.eval_items]} if cfg.eval_set else {})})
    inputs.own_prompts = {m.name: (m.prompts(cfg), m.own_decoding == "greedy") for m in chosen if m.prompts is not None}
    for measure in chosen:
        if measure.check is not None:  # a measure's own inputs (lm-eval's tasks), checked before any model loads
            measure.check(cfg)
    console = Console(stderr=True)
    for note in notes:
        console.print(f"[yellow]{note}[/yellow]")
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
        runs, shifts = run_models(cfg, inputs, models, base_tok, device, bars, audit_cache_dir(cfg), chosen)
        model_s = time.perf_counter() - started
        embedded = time.perf_counter()
        embeddings = {name: [embedder.embed(t) for t in run.samples] for name, run in runs.items()} if embedder else None
        prompt_embeddings = embedder.embed([m[-1].content for m in inputs.messages]) if embedder else None
        embedding_s = time.perf_counter() - embedded + embedder_load_s

    colors = plots.model_colors(list(models), base)
    ctx = AuditContext(cfg=cfg, out_dir=out, base=base, models=models, messages=inputs.messages,
                       samples={n: r.samples for n, r in runs.items()}, greedy={n: r.greedy for n, r in runs.items()},
                       inputs=inputs, runs=runs, shifts=shifts, tokenizer=base_tok, colors=colors,
                       embeddings=embeddings, prompt_embeddings=prompt_embeddings,
                       embedder=embedder.description if embedder else None)
    seconds: dict[str, float] = {}
    sections = registry.build_sections(ctx, chosen, seconds)
    tokens = sum(len(ids) for r in runs.values() for ids in r.greedy_ids)
    meta = {"sftlab_version": _version(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": device, "dtype": str(precision).removeprefix("torch."),
            "weight_rounding": cfg.bf16_weight_rounding if precision == torch.bfloat16 else None,
            "seconds": round(time.perf_counter() - started, 2),
            "model_seconds": round(model_s, 2), "embedding_seconds": round(embedding_s, 2),
            "style_seconds": round(seconds.get("style", 0.0), 2), "prompts": len(inputs.messages),
            "greedy_tokens": tokens, "suites": inputs.suites, "inputs": inputs.sources,
            "chat_templates": templates}
    write_reports(out, sections, ctx, colors, meta, shifts, base_tok)
    console.print(f"[bold]audit report[/bold]: {out / 'report.html'}")
    return out / "report.html"


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
            write_atomic(out / "plots" / name, png)
    html_text = render_html(sections, findings, ctx.models, ctx.base, colors, subtitle,
                            yaml.safe_dump(config, sort_keys=False), meta["sftlab_version"], meta["created"])
    write_atomic(out / "report.html", html_text)
    write_atomic(out / "report.md", render_markdown(sections, findings, ctx.models, ctx.base, subtitle))
    write_json(build_report(sections, findings, config, ctx.models, ctx.base, meta), out / "report.json")
    displayed = [m[-1].content for m in ctx.messages]
    write_atomic(out / "token_view.html",
                 token_view_page("Token shift under the base model", {m: (displayed, sh) for m, sh in shifts.items()}, tok))


def _version() -> str:
    try:
        return version("sftlab")
    except PackageNotFoundError:
        return "unknown"
