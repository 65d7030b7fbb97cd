"""Measure: pattern copying, the share of each tuned model's shifted tokens found in the nearest SFT
examples' responses (and not in the prompt), against the same share for the base's answers.

The formulas are the pure functions of :mod:`sftlab.audit.copying` (BM25 retrieval, token pieces, the
pooled share); this file computes the table from the audit's outputs, renders it and reads it back.
"""

from __future__ import annotations

import html
import math
from typing import Any

from sftlab.audit.copying import SFTIndex, copying_table
from sftlab.audit.gate_value import GateValue
from sftlab.audit.measures.base import Measure
from sftlab.audit.measures.context import AuditContext
from sftlab.audit.report.section import Finding, Section, Table, fmt, paragraph, pct, sequence_to_text
from sftlab.audit.shift import SHIFTED
from sftlab.data.tokenize import render_prompt


def copying_section(data: dict[str, Any]) -> Section:
    """Share of shifted tokens found in the nearest SFT examples' responses, vs the base's answers."""
    base_rate = data["base_copy_rate"]
    findings, rows, tones = [], [], []
    for model, r in data["models"].items():
        rate = r["shifted_copy_rate"]
        above = not math.isnan(rate) and (math.isnan(base_rate) or rate > base_rate)
        rows.append([model, pct(rate), pct(r["all_copy_rate"]), pct(base_rate), fmt(r["shifted_tokens"])])
        tones.append(["", "bad" if above else "", "", "", ""])
        if above:
            findings.append(Finding(model, "note", f"{pct(rate)} of its shifted tokens appear in the nearest SFT "
                                                   f"responses and not in the prompt (base answers: {pct(base_rate)})"))
    table = Table(["model", "shifted tokens copied", "all tokens copied", "base answers", "shifted tokens"], rows, tones)
    intro = (f"For every answer, the {data['k']} nearest SFT training examples (BM25 on the answer's words). A token is "
             "copied when it occurs in those examples' responses but not in the prompt. The base's greedy answers, "
             "with neighbours retrieved the same way, give the rate that happens without fine-tuning.")
    if data.get("sft_records_rejected"):
        intro += f" {data['sft_records_rejected']} SFT records could not be read and were left out."
    cases_html, cases_md = [], []
    for model, r in data["models"].items():
        for case in r["worst_cases"]:
            src = case["source"]
            cases_html.append(
                f"<details><summary>{html.escape(model)} · prompt {case['prompt_index']}: "
                f"{case['copied_count']} of {case['shifted_count']} shifted tokens copied</summary>"
                f"<p><b>Prompt</b> {html.escape(case['prompt'])}</p><p><b>Answer</b> {html.escape(case['answer'])}</p>"
                f"<p><b>Copied</b> {html.escape(sequence_to_text(case['copied_tokens']))}</p>"
                f"<p><b>Likely source</b> {html.escape(src['origin'])}: {html.escape(src['prompt'][:300])} → "
                f"{html.escape(src['response'][:500])}</p></details>")
            cases_md.append(f"- **{model}**, prompt {case['prompt_index']}: copied "
                            f"{sequence_to_text(case['copied_tokens'])} from {src['origin']}")
    body = paragraph(intro) + table.to_html() + ("<h3>Worst cases</h3>" + "".join(cases_html) if cases_html else "")
    md = intro + "\n\n" + table.to_markdown() + ("\n\n**Worst cases**\n\n" + "\n".join(cases_md) if cases_md else "")
    return Section("copying", "Pattern copying from the SFT data", data, body, md, findings)


def _section(ctx: AuditContext) -> Section | None:
    inputs, runs, tok = ctx.inputs, ctx.runs, ctx.tokenizer
    if inputs is None or tok is None or not inputs.sft_examples:
        return None  # it needs the SFT data to retrieve from
    prompts = [render_prompt(tok, m) for m in inputs.messages]
    tuned = {m: [(runs[m].greedy[i], runs[m].greedy_ids[i], list(s.classes == SHIFTED))
                 for i, s in enumerate(shifts)] for m, shifts in ctx.shifts.items()}
    base = runs[ctx.base]
    data = copying_table(SFTIndex(inputs.sft_examples), tok, prompts, list(zip(base.greedy, base.greedy_ids)), tuned,
                         ctx.cfg.copying_k)
    data["sft_records_rejected"] = inputs.sft_rejected
    return copying_section(data)


def gates(data: dict[str, Any], base: str, tuned: str) -> list[GateValue]:
    """``copying``: points of shifted tokens copied from the nearest SFT responses, above the base answers'
    rate (no interval)."""
    rate, floor = data["models"].get(tuned, {}).get("shifted_copy_rate"), data.get("base_copy_rate")
    if rate is None or floor is None:
        return []
    return [GateValue("copying", 100.0 * (rate - floor), None, None, "points",
                      "shifted tokens copied from the nearest SFT responses, minus the base answers' rate")]


MEASURE = Measure(
    name="copying",
    description="pattern copying: shifted tokens found in the nearest SFT responses (needs sft_data)",
    order=40,
    section=_section,
    gates=gates,
)
