"""Measure: forgetting, as perplexity on reference corpora and accuracy on multiple-choice benchmarks.

The formulas, with their sources, are the pure functions of :mod:`sftlab.audit.forgetting` (windowed
perplexity, the multiple-choice rules acc / acc_norm, the paired bootstraps); the audit scores every model
(:func:`sftlab.recipes.audit.run_model`) and this file tabulates, renders and reads the scores back.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sftlab.audit.forgetting import forgetting_table
from sftlab.audit.gate_value import GateValue
from sftlab.audit.measures.base import Column, Measure, delta_gate
from sftlab.audit.measures.context import AuditContext
from sftlab.audit.measures.style import sft_style_corpora
from sftlab.audit.report import plots
from sftlab.audit.report.section import (
    Finding,
    Section,
    Table,
    base_label,
    excludes_zero,
    fmt,
    fmt_delta,
    image_html,
    paragraph,
    pct,
    tone,
)


# A relative perplexity change smaller than this is not called a loss or a gain, whatever its interval.
PPL_THRESHOLD = 0.01
# How each multiple-choice rule picks an answer (sftlab.audit.forgetting); reports written before the rule
# was recorded used the mean token log-probability.
MC_RULES = {"acc": "acc: summed log-likelihood", "acc_norm": "acc_norm: log-likelihood per character",
            "mean_token": "mean token log-likelihood"}


def forgetting_section(data: dict[str, Any], base: str, colors: dict[str, Any],
                       sft_style: dict[str, float] | None = None) -> Section:
    """Perplexity on reference corpora and multiple-choice accuracy, base vs tuned.

    ``sft_style`` maps the corpora that share the SFT set's surface form (the style classifier calls that
    share of their paragraphs SFT-style) to the share: a perplexity change on them carries that warning.
    """
    sft_style = sft_style or {}
    findings: list[Finding] = []
    parts_html, parts_md = [], []
    ppl = data["perplexity"]
    if ppl:
        models = list(next(iter(ppl.values())))
        rows, tones = [], []
        for corpus, per in ppl.items():
            row, row_t = [corpus, fmt(per[base]["n_tokens"]), fmt(per[base]["perplexity"], 2)], ["", "", ""]
            for m in models:
                if m == base:
                    continue
                ch = per[m]["relative_change"]
                low, high = (math.nan if per[m].get(key) is None else per[m][key]
                             for key in ("change_ci_low", "change_ci_high"))
                interval = "" if math.isnan(low) else f" [{low:+.1%}, {high:+.1%}]"
                row.append(f"{fmt(per[m]['perplexity'], 2)} ({ch:+.1%}{interval})")
                # A change counts when it is large enough to matter and, where an interval exists, outside noise.
                notable = abs(ch) >= PPL_THRESHOLD and (math.isnan(low) or excludes_zero(low, high))
                row_t.append(tone(ch, False, notable))
                if notable:
                    warn = ""
                    if corpus in sft_style:
                        warn = (f" (but the style classifier calls {pct(sft_style[corpus])} of {corpus} SFT-style: it "
                                "shares the SFT set's surface form, so the change may measure that form, not what the "
                                "model knows)")
                    findings.append(Finding(m, "lost" if ch > 0 else "gained",
                                            f"perplexity on {corpus} {ch:+.1%} ({fmt(per[base]['perplexity'], 2)} → "
                                            f"{fmt(per[m]['perplexity'], 2)}){warn}", f"perplexity/{corpus}"))
            rows.append(row)
            tones.append(row_t)
        t = Table(["corpus", "tokens", base_label(base)] + [m for m in models if m != base], rows, tones)
        note = "In brackets: the relative change's paired bootstrap 95% interval over documents."
        if sft_style:
            note += (" " + ", ".join(sft_style) + ": the style classifier calls most of this text SFT-style (see the "
                     "style section), so a perplexity change on it may measure the shared surface form.")
        parts_html.append("<h3>Perplexity on reference text</h3>" + t.to_html() + paragraph(note))
        parts_md.append("### Perplexity on reference text\n\n" + t.to_markdown() + "\n\n" + note)
    mc = data["multiple_choice"]
    if mc:
        models = list(next(iter(mc.values())))
        rows, tones = [], []
        for bench, per in mc.items():
            row, row_t = [bench, fmt(per[base]["n"]), f"{per[base]['accuracy']:.1%}"], ["", "", ""]
            for m in models:
                if m == base:
                    continue
                r = per[m]
                sig = excludes_zero(r["ci_low"], r["ci_high"])
                row.append(f"{r['accuracy']:.1%} ({fmt_delta(100 * r['delta'], 1, (100 * r['ci_low'], 100 * r['ci_high']))} pt)")
                row_t.append(tone(r["delta"], True, sig))
                if sig:
                    findings.append(Finding(m, "gained" if r["delta"] > 0 else "lost",
                                            f"accuracy on {bench} {100 * r['delta']:+.1f} pt "
                                            f"[{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}]",
                                            f"multiple_choice/{bench}"))
            rows.append(row)
            tones.append(row_t)
        t = Table(["benchmark", "questions", base_label(base)] + [m for m in models if m != base], rows, tones)
        title = f"Multiple choice ({MC_RULES.get(data.get('mc_score', 'mean_token'), data.get('mc_score'))})"
        parts_html.append(f"<h3>{title}</h3>" + t.to_html())
        parts_md.append(f"### {title}\n\n" + t.to_markdown())
    images = {}
    if ppl or mc:
        png = plots.forgetting_bars({c: {m: v["perplexity"] for m, v in per.items()} for c, per in ppl.items()},
                                    {b: {m: v["accuracy"] for m, v in per.items()} for b, per in mc.items()},
                                    base, colors)
        images["forgetting.png"] = png
        parts_html.insert(0, image_html(png, "perplexity change and multiple-choice accuracy"))
        parts_md.insert(0, "![forgetting](plots/forgetting.png)")
    intro = (f"Token-level perplexity on each reference corpus (a change under {PPL_THRESHOLD:.0%} is not called a loss), "
             "and multiple-choice accuracy with paired bootstrap 95% intervals over questions.")
    return Section("forgetting", "Forgetting", data, paragraph(intro) + "".join(parts_html),
                   intro + "\n\n" + "\n\n".join(parts_md), findings, images)


def _section(ctx: AuditContext) -> Section | None:
    inputs, runs, cfg = ctx.inputs, ctx.runs, ctx.cfg
    if inputs is None or not (inputs.references or inputs.benchmarks):
        return None
    data = forgetting_table({c: {m: r.perplexity[c] for m, r in runs.items()} for c in inputs.references},
                            {b: {m: r.mc_correct[b] for m, r in runs.items()} for b in inputs.benchmarks},
                            ctx.base, cfg.bootstrap_samples, cfg.sampling.seed, mc_score=cfg.mc_score)
    return forgetting_section(data, ctx.base, ctx.colors, sft_style_corpora(ctx.results.get("style", {})))


DELTA_PERPLEXITY = Column("delta_perplexity", "Δ perplexity (reference)", False, digits=2, group="forgetting", rank=90)
DELTA_BENCHMARK = Column("delta_benchmark", "Δ benchmark accuracy", True, percent=True, group="forgetting", rank=100)


def sweep_row(data: dict[str, Any], base: str, tuned: str) -> dict[str, Any]:
    """The perplexity change (tuned minus base, mean over corpora) and accuracy change (mean over benchmarks)."""
    row = {}
    ppl = data.get("perplexity", {})
    if ppl:
        row["delta_perplexity"] = float(np.mean([per[tuned]["perplexity"] - per[base]["perplexity"]
                                                 for per in ppl.values()]))
    mc = data.get("multiple_choice", {})
    if mc:
        row["delta_benchmark"] = float(np.mean([per[tuned]["accuracy"] - per[base]["accuracy"] for per in mc.values()]))
    return row


def gates(data: dict[str, Any], base: str, tuned: str) -> list[GateValue]:
    """``perplexity_<corpus>`` (percent change, per corpus), ``perplexity`` (the corpus whose perplexity rose
    most), and ``<benchmark>_<rule>`` (points of accuracy under the report's rule: ``piqa_acc``,
    ``piqa_acc_norm``)."""
    out: list[GateValue] = []
    for corpus, per in data.get("perplexity", {}).items():
        row = per.get(tuned, {})
        out += delta_gate(f"perplexity_{corpus}", {"delta": row.get("relative_change"), "ci_low": row.get("change_ci_low"),
                                                   "ci_high": row.get("change_ci_high")},
                          "percent", f"relative perplexity change on {corpus}", scale=100.0)
    if out:
        worst = max(out, key=lambda g: g.change)
        out.append(GateValue("perplexity", worst.change, worst.low, worst.high, "percent",
                             f"the largest relative perplexity change: {worst.description.split(' on ', 1)[1]}"))
    rule = data.get("mc_score", "mean_token")
    for bench, per in data.get("multiple_choice", {}).items():
        out += delta_gate(f"{bench}_{rule}", per.get(tuned), "points",
                          f"accuracy on {bench} ({MC_RULES.get(rule, rule)})", scale=100.0)
    return out


MEASURE = Measure(
    name="forgetting",
    description="forgetting: perplexity on reference corpora, accuracy on multiple-choice benchmarks",
    order=50,
    section=_section,
    columns=(DELTA_PERPLEXITY, DELTA_BENCHMARK),
    row=sweep_row,
    gates=gates,
)
