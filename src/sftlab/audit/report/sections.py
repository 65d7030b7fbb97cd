"""The audit's own report sections, each built from its metric table (the same dict report.json holds).

Every builder returns a :class:`Section` with HTML, Markdown, plots and the headline findings: a change
is called "lost" or "gained" only when its 95% interval excludes zero; a perplexity change must also be
at least ``PPL_THRESHOLD`` (relative), since on a large corpus a negligible change can be significant.
"""

from __future__ import annotations

import html
import math
from typing import Any

from sftlab.audit.report import plots
from sftlab.audit.report.section import (
    Finding,
    Section,
    Table,
    excludes_zero,
    fmt,
    fmt_delta,
    image_html,
    sequence_to_text,
    tone,
)
from sftlab.audit.shift import REFERENCE_SHIFTED

# A relative perplexity change smaller than this is not called a loss or a gain, whatever its interval.
PPL_THRESHOLD = 0.01
# How each multiple-choice rule picks an answer (sftlab.audit.forgetting); reports written before the rule
# was recorded used the mean token log-probability.
MC_RULES = {"acc": "acc: summed log-likelihood", "acc_norm": "acc_norm: log-likelihood per character",
            "mean_token": "mean token log-likelihood"}

LABELS = {
    "distinct_1": "distinct-1", "distinct_2": "distinct-2", "distinct_3": "distinct-3", "distinct_4": "distinct-4",
    "ead": "EAD (n=1..4)", "self_bleu": "Self-BLEU", "compression_ratio": "compression ratio",
    "embedding_diversity": "embedding diversity",
}


def _p(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _base_label(base: str) -> str:
    return base if base == "base" else f"{base} (base)"


def _pct(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


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
        headers = ["metric", _base_label(base)] + [f"{m}" for m in tuned] + [f"Δ {m} [95% CI]" for m in tuned]
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
    body = (_p(intro) + image_html(png, "diversity per model") + "<h3>Per prompt</h3>" + per_input.to_html()
            + "<h3>Across prompts</h3>" + across.to_html())
    md = (intro + "\n\n![diversity](plots/diversity.png)\n\n### Per prompt\n\n" + per_input.to_markdown()
          + "\n\n### Across prompts\n\n" + across.to_markdown())
    return Section("diversity", "Diversity", table, body, md, findings, {"diversity.png": png})


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
            + [_pct(s["class_fraction"][c]) for c in ("unshifted", "marginal", "shifted")]
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
    body = (_p(intro) + table.to_html() + image_html(classes_png, "shift classes per model")
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


def copying_section(data: dict[str, Any]) -> Section:
    """Share of shifted tokens found in the nearest SFT examples' responses, vs the base's answers."""
    base_rate = data["base_copy_rate"]
    findings, rows, tones = [], [], []
    for model, r in data["models"].items():
        rate = r["shifted_copy_rate"]
        above = not math.isnan(rate) and (math.isnan(base_rate) or rate > base_rate)
        rows.append([model, _pct(rate), _pct(r["all_copy_rate"]), _pct(base_rate), fmt(r["shifted_tokens"])])
        tones.append(["", "bad" if above else "", "", "", ""])
        if above:
            findings.append(Finding(model, "note", f"{_pct(rate)} of its shifted tokens appear in the nearest SFT "
                                                   f"responses and not in the prompt (base answers: {_pct(base_rate)})"))
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
    body = _p(intro) + table.to_html() + ("<h3>Worst cases</h3>" + "".join(cases_html) if cases_html else "")
    md = intro + "\n\n" + table.to_markdown() + ("\n\n**Worst cases**\n\n" + "\n".join(cases_md) if cases_md else "")
    return Section("copying", "Pattern copying from the SFT data", data, body, md, findings)


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
                        warn = (f" (but the style classifier calls {_pct(sft_style[corpus])} of {corpus} SFT-style: it "
                                "shares the SFT set's surface form, so the change may measure that form, not what the "
                                "model knows)")
                    findings.append(Finding(m, "lost" if ch > 0 else "gained",
                                            f"perplexity on {corpus} {ch:+.1%} ({fmt(per[base]['perplexity'], 2)} → "
                                            f"{fmt(per[m]['perplexity'], 2)}){warn}", f"perplexity/{corpus}"))
            rows.append(row)
            tones.append(row_t)
        t = Table(["corpus", "tokens", _base_label(base)] + [m for m in models if m != base], rows, tones)
        note = "In brackets: the relative change's paired bootstrap 95% interval over documents."
        if sft_style:
            note += (" " + ", ".join(sft_style) + ": the style classifier calls most of this text SFT-style (see the "
                     "style section), so a perplexity change on it may measure the shared surface form.")
        parts_html.append("<h3>Perplexity on reference text</h3>" + t.to_html() + _p(note))
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
        t = Table(["benchmark", "questions", _base_label(base)] + [m for m in models if m != base], rows, tones)
        title = f"Multiple choice ({MC_RULES.get(data.get('mc_score', 'mean_token'), data.get('mc_score'))})"
        cut = [f"{bench}: {m} {per[m]['truncated']}" for bench, per in mc.items() for m in models if per[m].get("truncated")]
        cut_note = ("Questions whose context lost its start to fit the model's positions: " + ", ".join(cut) + "."
                    if cut else "")
        parts_html.append(f"<h3>{title}</h3>" + t.to_html() + (_p(cut_note) if cut else ""))
        parts_md.append(f"### {title}\n\n" + t.to_markdown() + (f"\n\n{cut_note}" if cut else ""))
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
    return Section("forgetting", "Forgetting", data, _p(intro) + "".join(parts_html),
                   intro + "\n\n" + "\n\n".join(parts_md), findings, images)


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
                   _p(intro) + table.to_html(), intro + "\n\n" + table.to_markdown(), findings)


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
    return Section("task", "Task quality", data, _p(intro) + table.to_html() + ex_html,
                   intro + "\n\n" + table.to_markdown(), findings)


# --------------------------------------------------------------------------------------------------
# Style capture, prompt adherence, surface form

# A reference corpus the style classifier calls SFT-style at least this often shares the SFT set's surface form.
CORPUS_STYLE_THRESHOLD = 0.5
# Below this held-out balanced accuracy the classifier barely tells the SFT style from the base's.
WEAK_CLASSIFIER = 0.6


def _pt(d: dict[str, Any]) -> str:
    """A share's delta in percentage points with its interval: ``+59.0 pt [+48.1, +68.8]``."""
    return fmt_delta(100 * d["delta"], 1, (100 * d["ci_low"], 100 * d["ci_high"])) + " pt"


def _share_ci(v: dict[str, Any]) -> str:
    if v["value"] is None or math.isnan(v["value"]):
        return "–"
    return f"{_pct(v['value'])} [{_pct(v['ci_low'])}, {_pct(v['ci_high'])}]"


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
    parts_html.append(_p(intro))
    parts_md.append(intro)

    if cap is not None:
        rows, tones = [], []
        for m in models:
            row = [m if m != base else _base_label(base), _share_ci(cap["models"][m])]
            row_t = ["", ""]
            if m == base:
                row.append("floor (held-out answers)")
                row_t.append("")
            else:
                d = cap["deltas"][m]
                sig = excludes_zero(d["ci_low"], d["ci_high"])
                row.append(_pt(d))
                row_t.append(tone(d["delta"], False, sig))
                floor = cap["models"][base]["value"]
                if sig and d["delta"] > 0:
                    findings.append(Finding(m, "lost", f"style capture: {_pct(cap['models'][m]['value'])} of its answers "
                                                       f"are in the SFT set's style (base floor {_pct(floor)}; {_pt(d)})", "style/capture"))
                elif sig:
                    findings.append(Finding(m, "note", f"style capture: fewer answers in the SFT set's style than the "
                                                       f"base's ({_pt(d)})"))
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
                         + ", ".join(f"{c} {_pct(s)}" for c, s in corpora.items())
                         + f". A corpus at {CORPUS_STYLE_THRESHOLD:.0%} or more shares the SFT set's surface form, so "
                           "a perplexity drop on it can come from that form alone.")
        parts_html += ["<h3>Style capture</h3>", table.to_html(), _p(method), _p(feat_text)]
        parts_md += ["### Style capture", table.to_markdown(), method, feat_text]
        if corp_text:
            parts_html.append(_p(corp_text))
            parts_md.append(corp_text)
    else:
        note = ("No style capture: " + data["capture_skipped"] + "." if "capture_skipped" in data else
                "No style capture: it needs the SFT data (--sft-data) to learn the SFT set's style from.")
        parts_html.append(_p(note))
        parts_md.append(note)

    if adh is not None:
        rows, tones = [], []
        for m in models:
            row = [m if m != base else _base_label(base), _num_ci(adh["models"][m])]
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
        parts_html += ["<h3>Prompt adherence</h3>", table.to_html(), _p(text)]
        parts_md += ["### Prompt adherence", table.to_markdown(), text]
    else:
        note = "No prompt adherence: it needs a sentence-embedding model (embedding_model)."
        parts_html.append(_p(note))
        parts_md.append(note)

    headers = ["statistic"] + (["SFT data"] if "sft_data" in surf else []) + [_base_label(base)] + tuned + [
        f"Δ {m} [95% CI]" for m in tuned]
    rows, tones = [], []
    for key, spec in surf["stats"].items():
        is_share = spec["stat"] == "mean"
        cell = (lambda v: _pct(v)) if is_share else (lambda v: fmt(v, 1))
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
            row.append(_pt(d) if is_share else fmt_delta(d["delta"], 1, (d["ci_low"], d["ci_high"])))
            row_t.append("bad" if sig and key in ("starts_lower", "spaced_punctuation") else "")
            if sig:
                b, t = surf["models"][base][key]["value"], surf["models"][m][key]["value"]
                change = f"{cell(b)} → {cell(t)} ({_pt(d) if is_share else fmt_delta(d['delta'], 1, (d['ci_low'], d['ci_high']))})"
                kind = "lost" if key in ("starts_lower", "spaced_punctuation") else "note"
                findings.append(Finding(m, kind, f"surface form: {spec['label']} {change}", f"style/surface/{spec['label']}"))
        rows.append(row)
        tones.append(row_t)
    table = Table(headers, rows, tones)
    text = ("Per answer: whether its first letter is lower case, whether it has tokenised punctuation (a space before "
            "a comma or period, as tokenised corpora write it), its length in generated tokens, and whether it ended "
            "(EOS) before the token budget. Casing and punctuation that move away from the base's are its surface form "
            "lost; length and stop rate are reported as notes.")
    parts_html += ["<h3>Surface form</h3>", table.to_html(), _p(text)]
    parts_md += ["### Surface form", table.to_markdown(), text]
    data = {**data, "embedding_model": embedder}
    return Section("style", "Style capture, prompt adherence and surface form", data, "".join(parts_html),
                   "\n\n".join(parts_md), findings)
