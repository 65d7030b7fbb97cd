"""Measure: the forgetting forecast, each tuned model's mean per-token KL to the base along its own answers
to the SFT set's prompts.

The formulas, with their source, are the pure functions of :mod:`sftlab.audit.forecast` (token KL both
ways, the ratio bootstrap over prompts); the audit samples and scores the answers
(:func:`sftlab.recipes.audit.forecast_run`) and this file tabulates, renders and reads them back.
"""

from __future__ import annotations

import math
from typing import Any

from sftlab.audit.forecast import forecast_samples_per_prompt, forecast_table
from sftlab.audit.gate_value import GateValue
from sftlab.audit.measures.base import Column, Measure, delta_gate
from sftlab.audit.measures.context import AuditContext
from sftlab.audit.report.section import Finding, Section, Table, fmt, paragraph


def forecast_section(data: dict[str, Any]) -> Section:
    """The forgetting forecast: each tuned model's mean per-token KL to the base on the SFT set's own prompts."""
    findings, rows = [], []
    for model, r in data["models"].items():
        fwd, rev = r["forward"], r["reverse"]
        rows.append([model, fmt(r["n_prompts"]), fmt(r["n_answers"]), fmt(r["n_positions"]),
                     f"{fmt(fwd['mean'], 4)} [{fmt(fwd['ci_low'], 4)}, {fmt(fwd['ci_high'], 4)}]",
                     f"{fmt(rev['mean'], 4)} [{fmt(rev['ci_low'], 4)}, {fmt(rev['ci_high'], 4)}]"])
        if not math.isnan(fwd["mean"]):
            findings.append(Finding(model, "note", f"forgetting forecast: KL(base ‖ tuned) {fwd['mean']:.4f} nats/token "
                                                   f"[{fwd['ci_low']:.4f}, {fwd['ci_high']:.4f}] on the SFT prompts"))
    table = Table(["model", "SFT prompts", "answers", "tokens", "KL(base ‖ tuned) [95% CI]",
                   "KL(tuned ‖ base) [95% CI]"], rows)
    context = ("both reading the same prompt ids" if data["template"] == "same"
               else "the tuned model reading its own template and the base a plain prompt")
    k = data["samples_per_prompt"]
    # One distinct SFT prompt: the bootstrap resamples its answers (see summarize_forecast).
    units = ("answers (the SFT set has one distinct prompt)" if data["prompts"] == 1 else "prompts")
    intro = (f"On {data['prompts']} distinct prompts of the SFT set, each tuned model samples {k} answer{'s' if k != 1 else ''} "
             f"per prompt. Along them, {context}, the base's and the tuned model's next-token distributions are compared "
             "at every position (the stopping position included). KL(base ‖ tuned) = "
             "Σ_v p_base(v) log(p_base(v) / p_tuned(v)) is the forward KL that forgetting tracks in "
             f"{data['source']}; the reverse direction is beside it. Both are nats per token, with percentile bootstrap "
             f"95% intervals over {units}. It needs no benchmark: a larger value forecasts more forgetting, and the "
             "sweep checks that forecast against the forgetting it measures.")
    return Section("forecast", "Forgetting forecast (KL to the base on the SFT prompts)", data,
                   paragraph(intro) + table.to_html(), intro + "\n\n" + table.to_markdown(), findings)


def _section(ctx: AuditContext) -> Section | None:
    forecasts = {m: r.forecast_kl for m, r in ctx.runs.items() if r.forecast_kl}
    if not forecasts or ctx.inputs is None:
        return None  # it needs the SFT data's prompts (sft_data, forecast_prompts)
    cfg, n = ctx.cfg, len(ctx.inputs.sft_prompts)
    return forecast_section(forecast_table(forecasts, n, forecast_samples_per_prompt(cfg, n), cfg.shift_template,
                                           cfg.bootstrap_samples, cfg.sampling.seed))


FORECAST_KL = Column("forecast_kl", "forecast: KL(base ‖ tuned) on SFT prompts", None, digits=4, group="forgetting",
                     rank=120)


def sweep_row(data: dict[str, Any], base: str, tuned: str) -> dict[str, Any]:
    """The forecast both ways (the table shows the forward KL; the sweep's forecast check reads both)."""
    forecast = data.get("models", {}).get(tuned)
    if not forecast:
        return {}
    return {"forecast_kl": forecast["forward"]["mean"], "forecast_kl_reverse": forecast["reverse"]["mean"]}


def gates(data: dict[str, Any], base: str, tuned: str) -> list[GateValue]:
    """``forecast_kl``: KL(base ‖ tuned) in nats per token on the SFT prompts (the base's own is 0)."""
    return delta_gate("forecast_kl", data.get("models", {}).get(tuned, {}).get("forward"), "value",
                      "forgetting forecast: KL(base ‖ tuned), nats per token on the SFT prompts", key="mean")


MEASURE = Measure(
    name="forecast",
    description="forgetting forecast: KL to the base along the tuned model's answers to the SFT prompts",
    order=60,
    section=_section,
    columns=(FORECAST_KL,),
    row=sweep_row,
    gates=gates,
)
