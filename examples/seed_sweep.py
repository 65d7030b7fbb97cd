"""Run a seeded sweep and tabulate it with intervals: the driver of ``examples/neftune_strength`` and
``examples/data_scaling``.

Usage (from the repo root)::

    .venv/bin/python examples/seed_sweep.py SWEEP.yaml [--strategies a,b] [KEY=VALUE ...]

1. ``sftlab sweep`` on the config (overrides as on the command line, e.g. ``seeds=[0]``
   ``train.max_steps=30`` ``out=runs/x_smoke``), with one more audit section, answer length. The sweep
   resumes: a run with ``row.json`` is skipped, an interrupted training run continues from its
   checkpoint, so a killed run of this script picks up where it stopped. ``--strategies`` keeps only the
   named strategies (their runs are the same runs the full config makes, so they count towards it).
2. ``OUT/seed_table.md`` and ``OUT/seed_table.json``: per strategy, the mean over seeds of each measure
   with a 95% Student-t interval (mean +- t_{0.975, n-1} * s / sqrt(n); none with one seed), and the
   number of seeds and the summed training wall time.

Measures, per run, all read from the run's files: eval loss of the saved model on the sweep's eval file
(the sweep's ``row.json``); ROUGE-L and BLEU of greedy answers on the audit's eval set and EAD diversity
(per input and across inputs, kept relative to the base) from ``audit/report.json``; the mean answer
length in words of the sampled answers (the section added here); the perplexity change on the
reference corpora and the multiple-choice accuracy (change and absolute) when the audit has them. The
base's ROUGE-L, BLEU, answer length and accuracy, which every run's audit measures alike, follow the
table.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

MEASURES: tuple[tuple[str, str, int], ...] = (
    ("eval_loss", "eval loss", 3),
    ("rouge_l", "ROUGE-L", 3),
    ("bleu", "BLEU", 2),
    ("answer_words", "answer length (words)", 1),
    ("diversity_kept_per_input", "EAD kept, per input", 3),
    ("diversity_kept_across_input", "EAD kept, across inputs", 3),
    ("style_share", "SFT-style share", 3),
    ("delta_adherence", "Δ adherence (cosine)", 3),
    ("delta_perplexity", "Δ perplexity (reference)", 2),
    ("benchmark_accuracy", "benchmark accuracy", 3),
    ("delta_benchmark", "Δ benchmark accuracy", 3),
)


def answer_length_section(ctx: Any) -> Any:
    """An audit section: mean length in words (whitespace-separated) of each model's sampled answers and
    greedy answers on the audit prompts. NEFTune's headline effect is longer answers (Jain et al. 2023)."""
    from sftlab.audit.report.section import Section

    def mean_words(texts: list[str]) -> float:
        return statistics.fmean(len(t.split()) for t in texts) if texts else float("nan")

    data = {"models": {m: {"sampled_words": mean_words([t for per in ctx.samples[m] for t in per]),
                           "greedy_words": mean_words(ctx.greedy[m])} for m in ctx.models}}
    rows = "\n".join(f"| {m} | {v['sampled_words']:.1f} | {v['greedy_words']:.1f} |" for m, v in data["models"].items())
    markdown = ("Mean answer length in words on the audit prompts (capped by `max_new_tokens`).\n\n"
                "| model | sampled | greedy |\n|---|---:|---:|\n" + rows)
    html = "<pre>" + markdown.replace("&", "&amp;").replace("<", "&lt;") + "</pre>"
    return Section("answer_length", "Answer length", data, html, markdown)


def run_measures(run_dir: Path) -> dict[str, Any] | None:
    """The measures of one finished sweep run (``row.json`` and ``audit/report.json``), or None."""
    row_file, report_file = run_dir / "row.json", run_dir / "audit" / "report.json"
    if not (row_file.is_file() and report_file.is_file()):
        return None
    row = json.loads(row_file.read_text())
    report = json.loads(report_file.read_text())
    sections, base = report["sections"], report["base"]
    tuned = next(m for m in report["models"] if m != base)
    out = {key: row.get(key) for key in ("eval_loss", "diversity_kept_per_input", "diversity_kept_across_input",
                                        "delta_perplexity", "delta_benchmark", "train_seconds")}
    task = sections.get("task", {}).get("models", {})
    out["rouge_l"], out["bleu"] = task.get(tuned, {}).get("rouge_l"), task.get(tuned, {}).get("bleu")
    out["base_rouge_l"], out["base_bleu"] = task.get(base, {}).get("rouge_l"), task.get(base, {}).get("bleu")
    lengths = sections.get("answer_length", {}).get("models", {})
    out["answer_words"] = lengths.get(tuned, {}).get("sampled_words")
    out["base_answer_words"] = lengths.get(base, {}).get("sampled_words")
    style = sections.get("style", {})
    out["style_share"] = style.get("capture", {}).get("models", {}).get(tuned, {}).get("value")
    out["base_style_share"] = style.get("capture", {}).get("models", {}).get(base, {}).get("value")
    out["delta_adherence"] = style.get("adherence", {}).get("deltas", {}).get(tuned, {}).get("delta")
    mc = sections.get("forgetting", {}).get("multiple_choice", {})
    out["benchmark_accuracy"] = statistics.fmean(per[tuned]["accuracy"] for per in mc.values()) if mc else None
    out["base_benchmark_accuracy"] = statistics.fmean(per[base]["accuracy"] for per in mc.values()) if mc else None
    return out


def t_interval(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% Student-t interval (None for a single value)."""
    from scipy.stats import t

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, float(t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))


def seed_table(out: Path, strategies: list[str], seeds: list[int]) -> tuple[str, dict[str, Any]]:
    """Markdown and JSON of the finished runs under ``out/runs``, one row per strategy."""
    table: dict[str, Any] = {}
    for name in strategies:
        runs = {s: run_measures(out / "runs" / name / f"seed{s}") for s in seeds}
        done = {s: m for s, m in runs.items() if m is not None}
        if not done:
            continue
        cells = {}
        for key, _, _ in MEASURES:
            values = [m[key] for m in done.values() if m.get(key) is not None and math.isfinite(m[key])]
            cells[key] = dict(zip(("mean", "half_width"), t_interval(values))) if values else None
        table[name] = {"seeds": sorted(done), "train_seconds": sum(m["train_seconds"] or 0 for m in done.values()),
                       "measures": cells, "runs": done}
    shown = [(k, label, d) for k, label, d in MEASURES if any(r["measures"][k] for r in table.values())]
    lines = ["| strategy | seeds | " + " | ".join(label for _, label, _ in shown) + " | train time (s, all seeds) |",
             "|---|---|" + "---:|" * (len(shown) + 1)]
    for name, r in table.items():
        cells = []
        for key, _, digits in shown:
            c = r["measures"][key]
            if c is None:
                cells.append("–")
            elif c["half_width"] is None:
                cells.append(f"{c['mean']:.{digits}f}")
            else:
                cells.append(f"{c['mean']:.{digits}f} ± {c['half_width']:.{digits}f}")
        seeds_cell = ",".join(str(s) for s in r["seeds"])
        lines.append(f"| {name} | {seeds_cell} | " + " | ".join(cells) + f" | {r['train_seconds']:.0f} |")
    note = "\n\nMean over seeds ± the half-width of a 95% Student-t interval (a single seed: no interval)."
    first = next((m for r in table.values() for m in r["runs"].values()), None)
    if first is not None and first.get("base_rouge_l") is not None:
        note += (f" The base, on the same eval set and prompts: ROUGE-L {first['base_rouge_l']:.3f}, "
                 f"BLEU {first['base_bleu']:.2f}, answer length {first['base_answer_words']:.1f} words"
                 + (f", benchmark accuracy {first['base_benchmark_accuracy']:.3f}"
                    if first.get("base_benchmark_accuracy") is not None else "")
                 + (f", SFT-style share {first['base_style_share']:.3f} (the classifier's floor)"
                    if first.get("base_style_share") is not None else "") + ".")
    return "\n".join(lines) + note + "\n", table


def main() -> None:
    """Parse, run the sweep (resuming), write and print the seed table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="sweep YAML")
    parser.add_argument("--strategies", help="comma-separated strategy names to run (default: all)")
    parser.add_argument("--table-only", action="store_true", help="tabulate the finished runs, train nothing")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE overrides of the sweep config")
    args = parser.parse_intermixed_args()

    from sftlab.config import SweepConfig, load_config
    from sftlab.models.builtin import resolve_model_source
    from sftlab.offline import set_offline
    from sftlab.recipes.sweep import run_sweep

    set_offline()
    cfg = load_config(SweepConfig, args.config, args.overrides)
    # A built-in base name becomes its converted dir here, so the sweep's settings hash covers its files.
    cfg = cfg.model_copy(update={"base_model": resolve_model_source(cfg.base_model)})
    if args.strategies:
        keep = args.strategies.split(",")
        unknown = sorted(set(keep) - {s.name for s in cfg.strategies})
        if unknown:
            raise SystemExit(f"unknown strategies {', '.join(unknown)}; the config has "
                             f"{', '.join(s.name for s in cfg.strategies)}")
        cfg = cfg.model_copy(update={"strategies": [s for s in cfg.strategies if s.name in keep]})
    if not args.table_only:
        from sftlab.errors import UserError

        try:
            run_sweep(cfg, extra_sections=[answer_length_section])
        except UserError as exc:  # as the sftlab CLI does: the message, not a traceback
            raise SystemExit(f"seed_sweep: {exc}") from None
    out = Path(cfg.out)
    markdown, table = seed_table(out, [s.name for s in cfg.strategies], cfg.seeds)
    (out / "seed_table.md").write_text(markdown)
    (out / "seed_table.json").write_text(json.dumps(table, indent=2))
    print(markdown)


if __name__ == "__main__":
    main()
