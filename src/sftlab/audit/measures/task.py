"""Measure: task quality, BLEU, ROUGE-L and exact match of every model's greedy answers on the eval set.

The formulas, with their sources, are the pure functions of :mod:`sftlab.audit.task` (sacrebleu's corpus
BLEU, rouge-score's ROUGE-L F, exact match, paired bootstraps over items); this file tabulates the audit's
eval-set answers, renders them and reads them back.
"""

from __future__ import annotations

import html
from typing import Any

from sftlab.audit.gate_value import GateValue
from sftlab.audit.measures.base import Column, Measure, delta_gate
from sftlab.audit.measures.context import AuditContext
from sftlab.audit.report.section import Finding, Section, Table, excludes_zero, fmt, fmt_delta, paragraph, tone
from sftlab.audit.task import task_table


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"



def task_section(data: dict[str, Any], base: str) -> Section:
    """BLEU, ROUGE-L and exact match of greedy outputs on the eval set."""
    metrics = [("bleu", "BLEU", 2), ("rouge_l", "ROUGE-L", 3), ("exact_match", "exact match", 3)]
    findings: list[Finding] = []
    rows, tones = [], []
    for model, scores in data["models"].items():
        row, row_t = [model, fmt(scores["n"])], ["", ""]
        for key, label, digits in metrics:
            cell = fmt(scores[key], digits)
            t = ""
            if model != base:
                d = data["deltas"][model][key]
                cell += f" ({fmt_delta(d['delta'], digits, (d['ci_low'], d['ci_high']))})"
                sig = excludes_zero(d["ci_low"], d["ci_high"])
                t = tone(d["delta"], True, sig)
                if sig:
                    findings.append(Finding(model, "gained" if d["delta"] > 0 else "lost",
                                            f"{label} on the eval set {d['delta']:+.{digits}f}", f"task/{key}"))
            row.append(cell)
            row_t.append(t)
        rows.append(row)
        tones.append(row_t)
    table = Table(["model", "items"] + [label for _, label, _ in metrics], rows, tones)
    intro = ("Greedy outputs against the eval set's references: corpus BLEU (sacrebleu), mean ROUGE-L F (rouge-score, "
             "stemmed) and exact match up to whitespace. ROUGE-L and exact-match deltas carry paired bootstrap 95% "
             "intervals over items.")
    ex_html = "".join(
        f"<details><summary>Example {i + 1}: {html.escape(_clip(ex['reference'], 90))}</summary>"
        + "".join(f"<p><b>{html.escape(k)}</b> {html.escape(str(v))}</p>" for k, v in ex.items()) + "</details>"
        for i, ex in enumerate(data["examples"]))
    return Section("task", "Task quality", data, paragraph(intro) + table.to_html() + ex_html,
                   intro + "\n\n" + table.to_markdown(), findings)


def _section(ctx: AuditContext) -> Section | None:
    inputs, cfg = ctx.inputs, ctx.cfg
    if inputs is None or not inputs.eval_items:
        return None
    data = task_table({m: r.eval_greedy for m, r in ctx.runs.items()}, [it.reference for it in inputs.eval_items],
                      ctx.base, cfg.bootstrap_samples, cfg.sampling.seed)
    return task_section(data, ctx.base)


# Shared with the synthetic world's judge, whose judged task score stands in for ROUGE-L (it comes later).
TASK_SCORE = Column("task_score", "task score", True, rank=10)


def sweep_row(data: dict[str, Any], base: str, tuned: str) -> dict[str, Any]:
    """The tuned model's ROUGE-L on the eval set, as the task score."""
    return {"task_score": data["models"][tuned].get("rouge_l")}


def gates(data: dict[str, Any], base: str, tuned: str) -> list[GateValue]:
    """``rouge_l`` and ``exact_match`` (points, with intervals) and ``bleu`` (BLEU points, no interval)."""
    deltas = data.get("deltas", {}).get(tuned, {})
    return (delta_gate("rouge_l", deltas.get("rouge_l"), "points", "ROUGE-L F on the eval set", scale=100.0)
            + delta_gate("exact_match", deltas.get("exact_match"), "points", "exact match on the eval set", scale=100.0)
            + delta_gate("bleu", deltas.get("bleu"), "value", "corpus BLEU on the eval set (0-100)"))


MEASURE = Measure(
    name="task",
    description="task quality: BLEU, ROUGE-L and exact match of greedy answers on the eval set (needs eval_set)",
    order=70,
    section=_section,
    columns=(TASK_SCORE,),
    row=sweep_row,
    gates=gates,
)
