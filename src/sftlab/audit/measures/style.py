"""Measure: style capture, prompt adherence and surface form of every model's sampled answers.

The formulas, with their sources, are the pure functions of :mod:`sftlab.audit.style` (the classifier,
the cosine, the surface statistics and the cluster bootstrap over prompts); this file computes the table
from the audit's outputs, renders it, and reads it back for the sweep and the gate.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sftlab.audit.gate_value import GateValue
from sftlab.audit.measures.base import Column, Measure, delta_gate
from sftlab.audit.measures.context import AuditContext
from sftlab.audit.report.section import (
    Finding,
    Section,
    Table,
    base_label,
    excludes_zero,
    fmt,
    fmt_delta,
    paragraph,
    pct,
    points,
    tone,
)
from sftlab.audit.style import adherence_scores, style_table

# A reference corpus the style classifier calls SFT-style at least this often shares the SFT set's surface form.
CORPUS_STYLE_THRESHOLD = 0.5
# Below this held-out balanced accuracy the classifier barely tells the SFT style from the base's.
WEAK_CLASSIFIER = 0.6


def points(d: dict[str, Any]) -> str:
    """A share's delta in percentage points with its interval: ``+59.0 pt [+48.1, +68.8]``."""
    return fmt_delta(100 * d["delta"], 1, (100 * d["ci_low"], 100 * d["ci_high"])) + " pt"


def _share_ci(v: dict[str, Any]) -> str:
    if v["value"] is None or math.isnan(v["value"]):
        return "–"
    return f"{pct(v['value'])} [{pct(v['ci_low'])}, {pct(v['ci_high'])}]"


def _num_ci(v: dict[str, Any], digits: int = 3) -> str:
    if v["value"] is None or math.isnan(v["value"]):
        return "–"
    return f"{fmt(v['value'], digits)} [{fmt(v['ci_low'], digits)}, {fmt(v['ci_high'], digits)}]"


def adherence_fell(data: dict[str, Any]) -> set[str]:
    """The tuned models whose prompt adherence fell (interval below zero)."""
    deltas = data.get("adherence", {}).get("deltas", {})
    return {m for m, d in deltas.items() if d["ci_high"] is not None and not math.isnan(d["ci_high"]) and d["ci_high"] < 0}


def sft_style_corpora(data: dict[str, Any]) -> dict[str, float]:
    """Reference corpora the style classifier calls SFT-style at least ``CORPUS_STYLE_THRESHOLD`` of the time."""
    corpora = data.get("capture", {}).get("corpora", {})
    return {c: s for c, s in corpora.items() if s >= CORPUS_STYLE_THRESHOLD}


def _feature_text(f: dict[str, Any]) -> str:
    # repr shows what a reader could not see otherwise: the space in " ,", a newline.
    return f"{repr(f['text'])} ({f['kind']})"


def style_section(data: dict[str, Any], base: str, embedder: str | None) -> Section:
    """Style capture, prompt adherence and surface form of every model's sampled answers, against the base.

    Findings, in the order the headline reads them: the share of answers in the SFT set's style (lost when
    it rises above the base's floor), prompt adherence (lost when it falls, gained when it rises), the
    casing and punctuation of the answers (lost: the base's surface form), then length and stop rate
    (notes). Each only when its 95% interval excludes zero.
    """
    models: list[str] = data["models"]
    tuned = [m for m in models if m != base]
    findings: list[Finding] = []
    parts_html: list[str] = []
    parts_md: list[str] = []
    cap = data.get("capture")
    adh = data.get("adherence")
    surf = data["surface"]

    intro = ("How each model answers, whatever it was asked: in the SFT set's style or its own, on the question or "
             "off it, and in which surface form. A fine-tune that has collapsed onto its SFT set writes every answer "
             "in that set's style and drifts off the question, while lexical diversity, which rewards incoherent "
             "text, can rise. All intervals are bootstrap 95% intervals resampling prompts (every answer of a "
             "prompt together), paired with the base for the differences.")
    parts_html.append(paragraph(intro))
    parts_md.append(intro)

    if cap is not None:
        rows, tones = [], []
        for m in models:
            row = [m if m != base else base_label(base), _share_ci(cap["models"][m])]
            row_t = ["", ""]
            if m == base:
                row.append("floor (held-out answers)")
                row_t.append("")
            else:
                d = cap["deltas"][m]
                sig = excludes_zero(d["ci_low"], d["ci_high"])
                row.append(points(d))
                row_t.append(tone(d["delta"], False, sig))
                floor = cap["models"][base]["value"]
                if sig and d["delta"] > 0:
                    findings.append(Finding(m, "lost", f"style capture: {pct(cap['models'][m]['value'])} of its answers "
                                                       f"are in the SFT set's style (base floor {pct(floor)}; {points(d)})", "style/capture"))
                elif sig:
                    findings.append(Finding(m, "note", f"style capture: fewer answers in the SFT set's style than the "
                                                       f"base's ({points(d)})"))
            rows.append(row)
            tones.append(row_t)
        table = Table(["model", "answers called SFT-style [95% CI]", "Δ vs base"], rows, tones)
        acc = cap["balanced_accuracy"]
        method = (f"A classifier (TF-IDF of character 1-4-grams and word 1-2-grams, case and punctuation kept; logistic "
                  f"regression; words that are neither frequent in the SFT set nor used in the base's answers to several "
                  f"prompts are masked to their shape, X for a capital, x for a small letter, 0 for a digit, so that "
                  f"the prompts' topics do not stand in for style) learns to tell {cap['n_sft']} SFT responses from the base's own {cap['n_base']} answers "
                  f"to these prompts. It is cross-fitted over {cap['folds']} folds of prompts: each answer is scored by "
                  f"the classifier that never saw the base's answers to its prompt. Held-out balanced accuracy "
                  f"{acc:.1%} (SFT responses recognised {cap['sft_recall']:.1%}, base answers {cap['base_recall']:.1%}); "
                  f"the base's share is the classifier's false-positive floor. When the audit prompts are unrelated to "
                  f"the SFT task, this share is the collapse measure: a model that answers them in the SFT set's style "
                  f"has collapsed onto it.")
        if acc < WEAK_CLASSIFIER:
            method += (f" The classifier barely tells the two styles apart (accuracy under {WEAK_CLASSIFIER:.0%}): the "
                       "SFT set's style is close to the base's, and style capture is weakly measured.")
            for m in tuned:
                findings.append(Finding(m, "note", f"style capture weakly measured: the classifier tells SFT responses "
                                                   f"from the base's answers with {acc:.0%} balanced accuracy"))
        feats = cap["features"]
        f_sft = ", ".join(_feature_text(f) for f in feats["sft"]) or "–"
        f_base = ", ".join(_feature_text(f) for f in feats["base"]) or "–"
        feat_text = f"What marks the SFT style (strongest n-grams): {f_sft}. What marks the base's: {f_base}."
        corpora = cap.get("corpora", {})
        corp_text = ""
        if corpora:
            corp_text = ("Reference corpora, paragraph by paragraph, called SFT-style: "
                         + ", ".join(f"{c} {pct(s)}" for c, s in corpora.items())
                         + f". A corpus at {CORPUS_STYLE_THRESHOLD:.0%} or more shares the SFT set's surface form, so "
                           "a perplexity drop on it can come from that form alone.")
        parts_html += ["<h3>Style capture</h3>", table.to_html(), paragraph(method), paragraph(feat_text)]
        parts_md += ["### Style capture", table.to_markdown(), method, feat_text]
        if corp_text:
            parts_html.append(paragraph(corp_text))
            parts_md.append(corp_text)
    else:
        note = ("No style capture: " + data["capture_skipped"] + "." if "capture_skipped" in data else
                "No style capture: it needs the SFT data (--sft-data) to learn the SFT set's style from.")
        parts_html.append(paragraph(note))
        parts_md.append(note)

    if adh is not None:
        rows, tones = [], []
        for m in models:
            row = [m if m != base else base_label(base), _num_ci(adh["models"][m])]
            row_t = ["", ""]
            if m == base:
                row.append("")
                row_t.append("")
            else:
                d = adh["deltas"][m]
                sig = excludes_zero(d["ci_low"], d["ci_high"])
                row.append(fmt_delta(d["delta"], ci=(d["ci_low"], d["ci_high"])))
                row_t.append(tone(d["delta"], True, sig))
                if sig:
                    findings.append(Finding(m, "lost" if d["delta"] < 0 else "gained",
                                            f"prompt adherence (prompt–answer cosine) {fmt(adh['models'][base]['value'])} "
                                            f"→ {fmt(adh['models'][m]['value'])} "
                                            f"({fmt_delta(d['delta'], ci=(d['ci_low'], d['ci_high']))})", "style/adherence"))
            lp = data.get("base_logprob", {}).get(m)
            row.append(_num_ci(lp) if lp else "–")
            row_t.append("")
            rows.append(row)
            tones.append(row_t)
        table = Table(["model", "prompt–answer cosine [95% CI]", "Δ vs base", "mean log p_base per token"], rows, tones)
        text = (f"Cosine between the embedding of each prompt and of each of its answers ({embedder}), averaged over "
                "answers. Beside it, a second view of how far the answers are from what the base would say: the "
                "mean log-probability per token the base gives each tuned model's scored answer (the shift section's "
                "answers, teacher-forced through the base).")
        parts_html += ["<h3>Prompt adherence</h3>", table.to_html(), paragraph(text)]
        parts_md += ["### Prompt adherence", table.to_markdown(), text]
    else:
        note = "No prompt adherence: it needs a sentence-embedding model (embedding_model)."
        parts_html.append(paragraph(note))
        parts_md.append(note)

    headers = ["statistic"] + (["SFT data"] if "sft_data" in surf else []) + [base_label(base)] + tuned + [
        f"Δ {m} [95% CI]" for m in tuned]
    rows, tones = [], []
    for key, spec in surf["stats"].items():
        is_share = spec["stat"] == "mean"
        cell = (lambda v: pct(v)) if is_share else (lambda v: fmt(v, 1))
        row = [spec["label"]]
        row_t = [""]
        if "sft_data" in surf:
            row.append(cell(surf["sft_data"].get(key)) if surf["sft_data"].get(key) is not None else "–")
            row_t.append("")
        for m in [base, *tuned]:
            row.append(cell(surf["models"][m][key]["value"]))
            row_t.append("")
        for m in tuned:
            d = surf["deltas"][m][key]
            sig = excludes_zero(d["ci_low"], d["ci_high"])
            row.append(points(d) if is_share else fmt_delta(d["delta"], 1, (d["ci_low"], d["ci_high"])))
            row_t.append("bad" if sig and key in ("starts_lower", "spaced_punctuation") else "")
            if sig:
                b, t = surf["models"][base][key]["value"], surf["models"][m][key]["value"]
                change = f"{cell(b)} → {cell(t)} ({points(d) if is_share else fmt_delta(d['delta'], 1, (d['ci_low'], d['ci_high']))})"
                kind = "lost" if key in ("starts_lower", "spaced_punctuation") else "note"
                findings.append(Finding(m, kind, f"surface form: {spec['label']} {change}", f"style/surface/{spec['label']}"))
        rows.append(row)
        tones.append(row_t)
    table = Table(headers, rows, tones)
    text = ("Per answer: whether its first letter is lower case, whether it has tokenised punctuation (a space before "
            "a comma or period, as tokenised corpora write it), its length in generated tokens, and whether it ended "
            "(EOS) before the token budget. Casing and punctuation that move away from the base's are its surface form "
            "lost; length and stop rate are reported as notes.")
    parts_html += ["<h3>Surface form</h3>", table.to_html(), paragraph(text)]
    parts_md += ["### Surface form", table.to_markdown(), text]
    data = {**data, "embedding_model": embedder}
    return Section("style", "Style capture, prompt adherence and surface form", data, "".join(parts_html),
                   "\n\n".join(parts_md), findings)


def style_data(ctx: AuditContext) -> dict[str, Any]:
    """The style table (:func:`sftlab.audit.style.style_table`) from the models' samples and shifts.

    The base's log-probability of a tuned answer is the mean over its tokens of log p_base, from the shift
    scores (probabilities clipped at 1e-30, so one that underflowed to 0 stays finite).
    """
    cfg, inputs, runs, tok = ctx.cfg, ctx.inputs, ctx.runs, ctx.tokenizer
    assert inputs is not None and tok is not None, "the style measure reads the audit's own outputs"
    sft = [ex.response for ex in inputs.sft_examples]
    sft_lengths = [len(ids) for ids in tok(sft, add_special_tokens=False)["input_ids"]] if sft else []
    adherence = ({m: adherence_scores(ctx.prompt_embeddings, ctx.embeddings[m]) for m in runs}
                 if ctx.embeddings is not None and ctx.prompt_embeddings is not None else None)
    logprob = {m: [float(np.mean(np.log(np.clip(a.base_prob, 1e-30, None)))) if len(a.base_prob) else float("nan")
                   for a in answers] for m, answers in ctx.shifts.items()}
    return style_table({m: r.samples for m, r in runs.items()}, {m: r.sample_lengths for m, r in runs.items()},
                       ctx.base, cfg.sampling.max_new_tokens, sft, sft_lengths, adherence, logprob,
                       inputs.references, cfg.bootstrap_samples, cfg.sampling.seed)


STYLE_CAPTURE = Column("style_capture", "answers in the SFT style (audit prompts)", False, percent=True,
                       group="style", rank=20)
DELTA_ADHERENCE = Column("delta_adherence", "Δ prompt adherence (cosine)", True, group="style", rank=30)


def sweep_row(data: dict[str, Any], base: str, tuned: str) -> dict[str, Any]:
    """The share of the tuned model's answers in the SFT style, and its change in prompt adherence."""
    row = {}
    if "capture" in data:
        row["style_capture"] = data["capture"]["models"][tuned]["value"]
    if "adherence" in data:
        row["delta_adherence"] = data["adherence"]["deltas"][tuned]["delta"]
    return row


def gates(data: dict[str, Any], base: str, tuned: str) -> list[GateValue]:
    """``style_capture`` (points of answers called SFT-style, against the base's floor) and ``adherence``
    (prompt-answer cosine)."""
    out = []
    if "capture" in data:
        out += delta_gate("style_capture", data["capture"]["deltas"].get(tuned), "points",
                          "answers in the SFT set's style, against the base's floor", scale=100.0)
    if "adherence" in data:
        out += delta_gate("adherence", data["adherence"]["deltas"].get(tuned), "value",
                          "prompt adherence: prompt-answer embedding cosine")
    return out


MEASURE = Measure(
    name="style",
    description="style capture (answers in the SFT set's style), prompt adherence and surface form",
    order=10,
    section=lambda ctx: style_section(style_data(ctx), ctx.base, ctx.embedder),
    columns=(STYLE_CAPTURE, DELTA_ADHERENCE),
    row=sweep_row,
    gates=gates,
)
