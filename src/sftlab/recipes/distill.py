"""``sftlab data distill --model BASE IN OUT``: self-distilled SFT targets (SDFT; see ``sftlab.data.distill``).

Reads the SFT records of IN, has BASE rewrite each response given its instruction and the reference
(batched, through the audit's sampler), keeps the rewrites that agree with their reference and the
originals otherwise, and writes:

    OUT                  the distilled records (jsonl), in IN's order and source format
    OUT.stats.json       counts (kept, fell back by reason, passed through), the rule, and the cost
                         (answer tokens, seconds, tokens/s)

Each finished batch of rewrites is cached (``--cache-dir``, by default $SFTLAB_CACHE/distill or
~/.cache/sftlab/distill, keyed by the model's files, the prompts and the decoding settings), so a run that
was killed resumes where it stopped, and a rerun with another agreement threshold generates nothing. A
sweep trains on the result by naming it: ``train: {train_file: OUT}`` in a strategy's overlay.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sftlab.config import SamplingSettings
from sftlab.data.base_answers import answer_prompts, default_cache_dir, generation_device
from sftlab.data.distill import DistillStats, distill_records, rewrite_prompt
from sftlab.data.readers import read_records
from sftlab.errors import UserError
from sftlab.io import write_atomic
from sftlab.models.device import resolve_device
from sftlab.models.load import is_adapter_dir, load_model, load_tokenizer


def stats_path(out: Path) -> Path:
    """``OUT.stats.json`` beside the output file."""
    return out.with_name(out.name + ".stats.json")


def run_distill(
    model: str,
    in_path: str | Path,
    out_path: str | Path,
    *,
    sampling: SamplingSettings | None = None,
    greedy: bool = True,
    rouge_threshold: float = 0.4,
    short_answer_words: int = 3,
    max_length: int = 1024,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    console: Console | None = None,
) -> DistillStats:
    """Distil ``in_path`` into ``out_path`` with ``model``; returns (and writes) the stats.

    ``sampling`` sets the decoding (``max_new_tokens`` caps a rewrite, ``batch_size`` the prompts per
    batch; with ``greedy=False`` the first of ``num_samples`` samples is used). Bad input records are
    skipped and counted, as ``sftlab train`` quarantines them.
    """
    console = console or Console()
    sampling = sampling or SamplingSettings(num_samples=1, max_new_tokens=256, batch_size=8)
    if not 0 <= rouge_threshold <= 1:
        raise UserError(f"--rouge-threshold must be in [0, 1], got {rouge_threshold}")
    if short_answer_words < 0:
        raise UserError(f"--short-answer-words must be >= 0, got {short_answer_words}")
    in_path, out_path = Path(in_path), Path(out_path)
    device = generation_device() if device == "auto" else resolve_device(device, "--device")
    if out_path.resolve() == in_path.resolve():
        raise UserError(f"OUT must differ from IN ({in_path}): the originals are the fallback")
    read = read_records([in_path])
    if not read.records:
        raise UserError(f"no usable records in {in_path} ({len(read.rejected)} rejected)")
    prompts = [rewrite_prompt(r) for r in read.records]
    todo = [i for i, p in enumerate(prompts) if p is not None]

    rewrites: list[str | None] = [None] * len(read.records)
    cut_off = [False] * len(read.records)
    started = time.perf_counter()
    answer_tokens = 0
    if todo:
        tokenizer = load_tokenizer(model, trust_remote_code)
        base = load_model(model, dtype, device, trust_remote_code, merge_adapter=is_adapter_dir(model),
                          allow_pickle=allow_pickle)
        out = answer_prompts(
            base, tokenizer, model, [prompts[i] for i in todo], sampling, greedy=greedy, max_length=max_length,
            cache_dir=Path(cache_dir) if cache_dir else default_cache_dir("distill"),
            description=f"distill: {Path(model).name} rewrites {len(todo)} responses",
        )
        for i, texts, ids in zip(todo, out.texts, out.token_ids):
            rewrites[i] = texts[0]
            # The sampler strips the EOS: an answer as long as the limit never ended on its own.
            cut_off[i] = len(ids[0]) >= sampling.max_new_tokens
            answer_tokens += len(ids[0])
    rows, _, stats = distill_records(read.records, rewrites, rouge_threshold, short_answer_words, cut_off)
    stats.seconds = time.perf_counter() - started
    stats.answer_tokens = answer_tokens
    stats.rule["decoding"] = {"greedy": greedy, **sampling.model_dump()}
    stats.rule["model"] = model

    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out_path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    summary = {**stats.as_dict(), "input": str(in_path), "output": str(out_path), "rejected_input": len(read.rejected)}
    write_atomic(stats_path(out_path), json.dumps(summary, indent=2))
    _print_stats(console, stats, out_path, len(read.rejected))
    return stats


def _print_stats(console: Console, stats: DistillStats, out: Path, rejected: int) -> None:
    table = Table(title=f"sftlab data distill -> {out}", show_header=False, title_justify="left")
    table.add_row("records", f"{stats.records:,} ({rejected:,} unreadable input records skipped)")
    table.add_row("rewritten and kept", f"{stats.kept:,} of {stats.rewritable:,}")
    reasons = ", ".join(f"{reason} {n}" for reason, n in stats.fallback_reasons.most_common())
    table.add_row("fell back to the original", f"{stats.fell_back:,}" + (f" ({reasons})" if reasons else ""))
    if stats.passed_through:
        table.add_row("passed through", f"{stats.passed_through:,} (text or multi-turn: not rewritten)")
    rule = stats.rule
    table.add_row("agreement rule", f"ROUGE-L >= {rule['rouge_threshold']} against the reference; exact match "
                                    f"for references of <= {rule['short_answer_words']} words")
    rate = stats.answer_tokens / stats.seconds if stats.seconds > 0 else 0.0
    table.add_row("cost", f"{stats.answer_tokens:,} answer tokens in {stats.seconds:.1f} s ({rate:,.0f} tokens/s, "
                          "cached batches included)")
    table.add_row("stats", str(stats_path(out)))
    console.print(table)
