"""Measure: diversity of every model's sampled answers, per prompt and across prompts.

The formulas, with their sources, are the pure functions of :mod:`sftlab.audit.diversity` (distinct-n,
EAD, Self-BLEU, compression ratio, embedding diversity) and its bootstrap table; this file scores the
audit's samples, renders the table and reads it back for the sweep and the gate.
"""

from __future__ import annotations

import math
from typing import Any

from sftlab.audit.diversity import ModelOutputs, diversity_table, score_outputs
from sftlab.audit.gate_value import GateValue
from sftlab.audit.measures.base import Column, Measure, delta_gate
from sftlab.audit.measures.context import AuditContext
from sftlab.audit.report import plots
from sftlab.audit.report.section import Finding, Section, Table, base_label, excludes_zero, fmt, fmt_delta, image_html, paragraph, tone

LABELS = {
    "distinct_1": "distinct-1", "distinct_2": "distinct-2", "distinct_3": "distinct-3", "distinct_4": "distinct-4",
    "ead": "EAD (n=1..4)", "self_bleu": "Self-BLEU", "compression_ratio": "compression ratio",
    "embedding_diversity": "embedding diversity",
}

# Diversity metrics computed on the answers' tokens or strings; embedding diversity is the one that is not.
LEXICAL = ("distinct_1", "distinct_2", "distinct_3", "distinct_4", "ead", "self_bleu", "compression_ratio")
NOISE_WARNING = ("but prompt adherence fell: off-topic, incoherent text scores as lexically diverse at temperature 1, "
                 "so read this rise as noise")


def diversity_section(table: dict[str, Any], base: str, adherence_fell: set[str] | frozenset[str] = frozenset()) -> Section:
    """Diversity per input and across inputs, base vs each tuned model.

    Findings name lexical and embedding diversity apart; a lexical rise of a model in ``adherence_fell``
    carries :data:`NOISE_WARNING`.
    """
    names: list[str] = table["metrics"]
    models = list(table["models"])
    tuned = [m for m in models if m != base]
    findings: list[Finding] = []
    for model in tuned:
        for kind, members in (("lexical", [n for n in names if n in LEXICAL]),
                              ("embedding", [n for n in names if n not in LEXICAL])):
            lost, gained = [], []
            for n in members:
                d = table["deltas"][model]["per_input"][n]
                if excludes_zero(d["ci_low"], d["ci_high"]):
                    more_diverse = (d["delta"] > 0) == table["higher_is_diverse"][n]
                    (gained if more_diverse else lost).append(f"{LABELS[n]} {d['delta']:+.3g}")
            label = "lexical diversity per prompt: " if kind == "lexical" else "embedding diversity per prompt: "
            if lost:
                findings.append(Finding(model, "lost", label + ", ".join(lost), f"diversity/{kind}/per_input"))
            if gained:
                warn = f" ({NOISE_WARNING})" if kind == "lexical" and model in adherence_fell else ""
                findings.append(Finding(model, "gained", label + ", ".join(gained) + warn,
                                            f"diversity/{kind}/per_input"))

    def block(scope: str) -> Table:
        headers = ["metric", base_label(base)] + [f"{m}" for m in tuned] + [f"Δ {m} [95% CI]" for m in tuned]
        rows, tones = [], []
        for n in names:
            arrow = "↑" if table["higher_is_diverse"][n] else "↓"
            row = [f"{LABELS[n]} {arrow}"]
            row_t = [""]
            for m in [base, *tuned]:
                v = table["models"][m][scope][n]
                row.append(f"{fmt(v['mean'])} ± {fmt(v['std'])}" if scope == "per_input" else fmt(v))
                row_t.append("")
            for m in tuned:
                d = table["deltas"][m][scope][n]
                row.append(fmt_delta(d["delta"], ci=(d["ci_low"], d["ci_high"])))
                row_t.append(tone(d["delta"], table["higher_is_diverse"][n], excludes_zero(d["ci_low"], d["ci_high"])))
            rows.append(row)
            tones.append(row_t)
        return Table(headers, rows, tones)

    png = plots.diversity_bars(table, base, LABELS)
    per_input, across = block("per_input"), block("across_input")
    intro = ("Per prompt: the K samples of each prompt scored as a set, then mean ± std over prompts. Across prompts: "
             "the first sample of every prompt scored as one set. ↑/↓ marks the direction that means more diverse. "
             "Intervals are paired bootstrap 95% intervals over prompts; set-level across-prompt metrics "
             "(distinct-n, EAD, compression) have none, since resampling with replacement changes their value.")
    body = (paragraph(intro) + image_html(png, "diversity per model") + "<h3>Per prompt</h3>" + per_input.to_html()
            + "<h3>Across prompts</h3>" + across.to_html())
    md = (intro + "\n\n![diversity](plots/diversity.png)\n\n### Per prompt\n\n" + per_input.to_markdown()
          + "\n\n### Across prompts\n\n" + across.to_markdown())
    return Section("diversity", "Diversity", table, body, md, findings, {"diversity.png": png})


def adherence_fell(style: dict[str, Any]) -> set[str]:
    """The tuned models whose prompt adherence fell (interval below zero), from the style section's data."""
    deltas = style.get("adherence", {}).get("deltas", {})
    return {m for m, d in deltas.items() if d["ci_high"] is not None and not math.isnan(d["ci_high"]) and d["ci_high"] < 0}


def diversity_data(ctx: AuditContext) -> dict[str, Any]:
    """The diversity table of every model's samples (tokens: the base's tokenizer, so all share one vocabulary)."""
    tok = ctx.tokenizer
    assert tok is not None, "the diversity measure reads the audit's own outputs"
    scores = {}
    for name, run in ctx.runs.items():
        outputs = ModelOutputs(texts=run.samples,
                               tokens=[tok(t, add_special_tokens=False)["input_ids"] for t in run.samples],
                               embeddings=ctx.embeddings[name] if ctx.embeddings else None)
        scores[name] = score_outputs(outputs, len(tok))
    return diversity_table(scores, ctx.base, ctx.cfg.bootstrap_samples, ctx.cfg.sampling.seed)


def _section(ctx: AuditContext) -> Section:
    return diversity_section(diversity_data(ctx), ctx.base, adherence_fell(ctx.results.get("style", {})))


# The diversity metric the sweep reports as "kept": EAD (Kirk et al. 2024) is length-corrected distinct-n,
# so it does not reward a model for writing longer answers.
DIVERSITY_METRIC = "ead"
KEPT_PER_INPUT = Column("diversity_kept_per_input", "diversity kept, per input", True, percent=True, rank=50)
KEPT_ACROSS_INPUT = Column("diversity_kept_across_input", "diversity kept, across inputs", True, percent=True, rank=60)


def sweep_row(data: dict[str, Any], base: str, tuned: str) -> dict[str, Any]:
    """The share of the base's EAD the tuned model kept, per input and across inputs."""
    row = {}
    div = data["models"]
    for scope in ("per_input", "across_input"):
        b, t = div[base][scope][DIVERSITY_METRIC], div[tuned][scope][DIVERSITY_METRIC]
        b, t = (b["mean"], t["mean"]) if scope == "per_input" else (b, t)
        row[f"diversity_kept_{scope}"] = t / b if b else None
    return row


def gates(data: dict[str, Any], base: str, tuned: str) -> list[GateValue]:
    """Every metric's per-prompt change (``distinct_2``, ``ead``, ``self_bleu``, ...), in the metric's unit."""
    out = []
    for name, d in data.get("deltas", {}).get(tuned, {}).get("per_input", {}).items():
        direction = "higher is more diverse" if data["higher_is_diverse"][name] else "lower is more diverse"
        out += delta_gate(name, d, "value", f"{LABELS[name]} per prompt ({direction})")
    return out


MEASURE = Measure(
    name="diversity",
    description="lexical and embedding diversity of the sampled answers, per prompt and across prompts",
    order=20,
    section=_section,
    columns=(KEPT_PER_INPUT, KEPT_ACROSS_INPUT),
    row=sweep_row,
    gates=gates,
)
