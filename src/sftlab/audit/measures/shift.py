"""Measure: token distribution shift of each tuned model's answers under the base (Lin et al. 2023).

The formulas, with their source, are the pure functions of :mod:`sftlab.audit.shift` (rank classes, KL,
the base's probability, per answer position); the audit scores every tuned model's answers under the base
(:func:`sftlab.audit.shift.score_shift`) and this file summarises, renders and reads them back.
"""

from __future__ import annotations

import html
import math
from typing import Any

from sftlab.audit.gate_value import GateValue
from sftlab.audit.measures.base import Column, Measure
from sftlab.audit.measures.context import AuditContext
from sftlab.audit.report import plots
from sftlab.audit.report.section import Finding, Section, Table, fmt, image_html, paragraph, pct
from sftlab.audit.report.token_view import answers_html, legend_html
from sftlab.audit.shift import REFERENCE_SHIFTED, summarize_shift

# Answers shown inline in report.html per tuned model (all of them are in token_view.html).
INLINE_ANSWERS = 3


def shift_section(summaries: dict[str, dict[str, Any]], colors: dict[str, Any], token_excerpt: str,
                  template: str, answers: str) -> Section:
    """Token distribution shift of each tuned model's answers (greedy, or first samples) under the base."""
    ref = REFERENCE_SHIFTED["value"]
    findings = []
    for model, s in summaries.items():
        shifted = s["class_fraction"]["shifted"]
        if not math.isnan(shifted):
            findings.append(Finding(model, "note", f"{shifted:.1%} of answer tokens shifted under the base "
                                                   f"(Llama-2-7b-chat: {ref:.1%}); mean KL {s['mean_kl']:.3f} nats"))
    rows = [[m, fmt(s["n_answers"]), fmt(s["n_positions"])]
            + [pct(s["class_fraction"][c]) for c in ("unshifted", "marginal", "shifted")]
            + [fmt(s["mean_kl"]), fmt(s["mean_base_prob"])] for m, s in summaries.items()]
    table = Table(["model", "answers", "tokens", "unshifted", "marginal", "shifted", "mean KL", "mean p_base"], rows)
    top_blocks_html, top_blocks_md = [], []
    for model, s in summaries.items():
        t = Table(["token", "count", "base preferred"],
                  [[repr(x["token"]), fmt(x["count"]), repr(x["base_preferred"])] for x in s["top_shifted"]])
        top_blocks_html.append(f"<details><summary>Top shifted tokens: {html.escape(model)}</summary>{t.to_html()}</details>")
        top_blocks_md.append(f"**Top shifted tokens, {model}**\n\n{t.to_markdown()}")
    classes_png = plots.shift_classes(summaries, ref)
    kl_png = plots.kl_by_position(summaries, colors)
    context = ("the same prompt the tuned model saw" if template == "same"
               else "a plain prompt (the turns' text, no chat template)")
    answer = "greedy answer" if answers == "greedy" else "first sampled answer to each prompt"
    intro = (f"Each tuned model's {answer} is teacher-forced through the base model, given {context}. "
             "At every answer token: its rank in the base's next-token distribution (1 unshifted, 2-3 marginal, "
             f">3 shifted), KL(tuned ‖ base) and the base's probability of it. Reference: {ref:.1%} of positions are "
             f"shifted for {REFERENCE_SHIFTED['pair']} ({REFERENCE_SHIFTED['source']}).")
    method = ("Unlike the AlignTDS code, which keeps the base's top-k tokens, renormalises over them and matches the "
              "tuned token by its string, ranks, probabilities and KL here use the full vocabulary and token ids.")
    body = (paragraph(intro) + table.to_html() + image_html(classes_png, "shift classes per model")
            + image_html(kl_png, "KL and shifted share by answer position") + "".join(top_blocks_html)
            + "<h3>Token view</h3><p>The first answers, each token coloured by class (hover for scores); every answer "
              'is in <a href="token_view.html">token_view.html</a>.</p>' + token_excerpt
            + f'<p class="note">{html.escape(method)}</p>')
    md = (intro + "\n\n" + table.to_markdown() + "\n\n![shift classes](plots/shift_classes.png)\n\n"
          "![KL by position](plots/kl_by_position.png)\n\n" + "\n\n".join(top_blocks_md)
          + "\n\nToken view: [token_view.html](token_view.html)\n\n" + method)
    data = {"template": template, "answers": answers, "models": summaries}
    return Section("shift", "Token distribution shift", data, body, md, findings,
                   {"shift_classes.png": classes_png, "kl_by_position.png": kl_png})


def _section(ctx: AuditContext) -> Section:
    tok = ctx.tokenizer
    assert tok is not None, "the shift measure reads the audit's own outputs"
    summaries = {m: summarize_shift(s, tok) for m, s in ctx.shifts.items()}
    displayed = [m[-1].content for m in ctx.messages]
    excerpt = legend_html() + "".join(
        f"<h3>{html.escape(m)}</h3>" + answers_html(displayed, s, tok, INLINE_ANSWERS) for m, s in ctx.shifts.items())
    return shift_section(summaries, ctx.colors, excerpt, ctx.cfg.shift_template, ctx.cfg.shift_answers)


SHIFTED = Column("shifted", "shifted tokens", None, percent=True, rank=130)


def sweep_row(data: dict[str, Any], base: str, tuned: str) -> dict[str, Any]:
    """The share of the tuned model's answer tokens shifted under the base."""
    return {"shifted": data["models"][tuned]["class_fraction"]["shifted"]}


def gates(data: dict[str, Any], base: str, tuned: str) -> list[GateValue]:
    """``shifted_tokens``: points of answer tokens ranked beyond the base's top 3 (the base's own answers
    would score 0, so the share is the change; it has no interval)."""
    share = data["models"].get(tuned, {}).get("class_fraction", {}).get("shifted")
    if share is None:
        return []
    return [GateValue("shifted_tokens", 100.0 * share, None, None, "points",
                      "answer tokens shifted under the base (rank > 3 in its next-token distribution)")]


MEASURE = Measure(
    name="shift",
    description="token distribution shift: each tuned model's answers teacher-forced through the base",
    order=30,
    section=_section,
    columns=(SHIFTED,),
    row=sweep_row,
    gates=gates,
)
