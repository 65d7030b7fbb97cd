"""Measure (opt-in, ``safety``): refusals kept or lost, on harmful requests and on benign look-alikes.

Every model answers the same prompts greedily (as HarmBench scores): a stratified sample of the shipped
harmful set (AdvBench and Do-Not-Answer) and the benign look-alikes (XSTest's kinds). A refusal judge
(:mod:`sftlab.audit.refusal`: phrase rules by default, one setting for exemplars or a guard model) reads
each answer; :func:`sftlab.audit.safety_rates.safety_rates` gives each model's refusal rate and
over-refusal rate and the change against the base with a paired bootstrap 95% interval over prompts.
The section shows, for the same prompts, the base's and the tuned model's answers side by side.

Turn it on with ``measures: {safety: {}}`` in the audit config (settings: ``SafetySettings``).
"""

from __future__ import annotations

import html
from dataclasses import asdict
from typing import Any

from sftlab.audit.gate_value import GateValue
from sftlab.audit.measures.base import Column, Measure
from sftlab.audit.measures.context import AuditContext
from sftlab.audit.refusal import build_judge
from sftlab.audit.report.section import Finding, Section, Table, fmt_delta
from sftlab.audit.safety_rates import RATE_NAMES, SafetySettings, opening_match, safety_prompts, safety_rates
from sftlab.config import AuditConfig
from sftlab.data.records import Message

NAME = "safety"
OPENING_TOKENS = 3  # Qi et al. 2024 find refusals decided within the first few answer tokens


def _settings(cfg: AuditConfig) -> SafetySettings:
    return SafetySettings.model_validate(cfg.measures.get(NAME) or {})


def prompts(cfg: AuditConfig) -> list[list[Message]]:
    """The harmful prompts, then the benign ones, as one-turn conversations."""
    sets = safety_prompts(_settings(cfg))
    return [[Message("user", p.prompt)] for name in ("harmful", "benign") for p in sets[name]]


def _section(ctx: AuditContext) -> Section | None:
    settings = _settings(ctx.cfg)
    sets = safety_prompts(settings)
    n_harmful = len(sets["harmful"])
    answers = {m: [samples[0] for samples in per] for m, per in ctx.own_samples(NAME).items()}
    split = {m: {"harmful": a[:n_harmful], "benign": a[n_harmful:]} for m, a in answers.items()}
    judge = build_judge(settings.judge, ctx.cfg.embedding_model, "cpu")
    result = safety_rates(sets, split[ctx.base], {m: split[m] for m in ctx.models if m != ctx.base}, judge,
                          ctx.cfg.bootstrap_samples, ctx.cfg.sampling.seed)
    rows = {m: {} for m in ctx.models}

    def encode(text: str) -> list[int]:
        return ctx.tokenizer(text, add_special_tokens=False)["input_ids"]

    for row in result.rows:
        label = ctx.base if row.model == "base" else row.model
        entry: dict[str, Any] = {"n": row.n, "rate": row.rate}
        if row.model != "base":
            entry.update(delta=row.delta, ci_low=row.low, ci_high=row.high)
            if row.set == "harmful" and ctx.tokenizer is not None:  # do its refusals open as the base's do?
                share, refusals = opening_match(split[ctx.base]["harmful"], split[label]["harmful"],
                                                result.refused[(row.model, "harmful")], encode, OPENING_TOKENS)
                entry.update(opening_match=share if refusals else None, refusals=refusals)
        rows[label][row.set] = entry
    data = {"judge": settings.judge, "sets": {s: len(p) for s, p in sets.items()}, "models": rows,
            "examples": {m: [asdict(x) for x in xs] for m, xs in result.examples.items()}}
    table = Table(["model"] + [f"{RATE_NAMES[s]} (n={len(sets[s])}) [Δ, 95% CI]" for s in ("harmful", "benign")]
                  + ["refusals with the base's opening"],
                  [[m] + [_cell(rows[m].get(s)) for s in ("harmful", "benign")] + [_opening(rows[m].get("harmful"))]
                   for m in ctx.models])
    findings = [Finding(row.model, "lost" if (row.set == "harmful") == (row.delta < 0) else "gained",
                        text, f"safety/{row.set}")
                for row, text in _moved(result)]
    note = (f"Greedy answers judged by the `{settings.judge}` refusal judge. Refusal rate: the share of "
            "harmful requests refused (higher is safer). Over-refusal: the share of benign look-alike prompts "
            "refused (lower is better). Changes are paired over prompts. Same opening: the share of a tuned "
            f"model's refusals whose first {OPENING_TOKENS} tokens are the base's answer's (Qi et al. 2024).")
    examples_html = "".join(_example_html(m, xs) for m, xs in data["examples"].items())
    examples_md = "\n\n".join(_example_md(m, xs) for m, xs in data["examples"].items())
    return Section(NAME, "Safety: refusals kept or lost", data,
                   f"<p>{html.escape(note)}</p>{table.to_html()}{examples_html}",
                   f"{note}\n\n{table.to_markdown()}\n\n{examples_md}", findings)


def _moved(result: Any) -> list[tuple[Any, str]]:
    """(row, finding text) for each tuned rate whose interval excludes zero, in the result's order."""
    texts = iter(result.findings)
    return [(row, next(texts)) for row in result.rows if row.model != "base" and row.moved]


def _cell(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "–"
    rate = f"{100 * entry['rate']:.1f}%"
    if "delta" not in entry:
        return rate
    return f"{rate} [{fmt_delta(100 * entry['delta'], 1, (100 * entry['ci_low'], 100 * entry['ci_high']))} pt]"


def _opening(entry: dict[str, Any] | None) -> str:
    if not entry or "opening_match" not in entry:
        return "–"
    share = "–" if entry["opening_match"] is None else f"{100 * entry['opening_match']:.0f}%"
    return f"{share} of {entry['refusals']}"


def _verdict(refused: bool) -> str:
    return "refused" if refused else "complied"


def _example_html(model: str, examples: list[dict[str, Any]]) -> str:
    if not examples:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(x['set'])}</td><td>{html.escape(x['prompt'])}</td>"
        f"<td><b>{_verdict(x['base_refused'])}</b>: {html.escape(x['base_answer'])}</td>"
        f"<td><b>{_verdict(x['tuned_refused'])}</b>: {html.escape(x['tuned_answer'])}</td></tr>" for x in examples)
    return (f"<h3>Same prompts, base against {html.escape(model)}</h3><table><tr><th>set</th><th>prompt</th>"
            f"<th>base</th><th>{html.escape(model)}</th></tr>{rows}</table>")


def _example_md(model: str, examples: list[dict[str, Any]]) -> str:
    def clip(text: str) -> str:
        return " ".join(text.split())[:160].replace("|", "\\|")

    lines = [f"### Same prompts, base against {model}", "", f"| set | prompt | base | {model} |", "|---|---|---|---|"]
    lines += [f"| {x['set']} | {clip(x['prompt'])} | {_verdict(x['base_refused'])}: {clip(x['base_answer'])} | "
              f"{_verdict(x['tuned_refused'])}: {clip(x['tuned_answer'])} |" for x in examples]
    return "\n".join(lines)


REFUSAL = Column("refusal", "refusal rate (harmful)", True, percent=True, group="forgetting", rank=105)
OVER_REFUSAL = Column("over_refusal", "over-refusal rate (benign)", False, percent=True, group="forgetting", rank=106)
OPENING = Column("refusal_opening_match", "refusals opening as the base's (first 3 tokens)", None, percent=True,
                 group="forgetting", rank=107)


def sweep_row(data: dict[str, Any], base: str, tuned: str) -> dict[str, Any]:
    """The tuned model's refusal and over-refusal rates, and the share of its refusals that open as the base's."""
    model = data.get("models", {}).get(tuned, {})
    keys = {"harmful": "refusal", "benign": "over_refusal"}
    row = {keys[s]: model[s]["rate"] for s in keys if s in model}
    if model.get("harmful", {}).get("opening_match") is not None:
        row["refusal_opening_match"] = model["harmful"]["opening_match"]
    return row


def gates(data: dict[str, Any], base: str, tuned: str) -> list[GateValue]:
    """``refusal`` and ``over_refusal``: points of change in the refusal rates against the base."""
    out = []
    for set_name, gate in (("harmful", "refusal"), ("benign", "over_refusal")):
        entry = data.get("models", {}).get(tuned, {}).get(set_name)
        if entry and entry.get("delta") is not None:
            out.append(GateValue(gate, 100 * entry["delta"], 100 * entry["ci_low"], 100 * entry["ci_high"], "points",
                                 f"{RATE_NAMES[set_name]} on the {set_name} prompts"))
    return out


MEASURE = Measure(
    name=NAME,
    description="safety: refusal rate on harmful requests and over-refusal on benign look-alikes (greedy answers)",
    order=60,
    section=_section,
    columns=(REFUSAL, OVER_REFUSAL, OPENING),
    row=sweep_row,
    gates=gates,
    opt_in=True,
    prompts=prompts,
    own_decoding="greedy",
    settings=SafetySettings,
)
