"""The gateable changes of a saved audit report: ``gate_values(report_json)``.

PROVISIONAL: the measures registry (``sftlab.audit.measures.registry``) is to give every measure's own
GateValues; until it lands, :func:`gate_values` below reads today's report.json for the measures the gate
names. At the merge, :func:`gate_values` and :data:`MEASURES` are replaced by the registry's; the gate
(:mod:`sftlab.audit.gate`) and the CLI use only these two names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sftlab.audit.gate_value import GateValue, Unit
from sftlab.errors import UserError

# name (``<benchmark>``/``<corpus>`` stand for the file's stem), unit, what the change is.
MEASURES: tuple[tuple[str, Unit, str], ...] = (
    ("style_capture", "points", "change in the share of sampled answers the style classifier calls SFT-style "
                                "(needs --sft-data)"),
    ("adherence", "value", "change in the mean prompt-answer embedding cosine (needs an embedding model)"),
    ("rouge_l", "points", "change in mean ROUGE-L F of greedy answers against the eval set's references"),
    ("<benchmark>_acc", "points", "change in multiple-choice accuracy (mc_score: acc), e.g. piqa_acc"),
    ("<benchmark>_acc_norm", "points", "the same under mc_score: acc_norm"),
    ("<corpus>_perplexity", "percent", "relative change in perplexity on a text corpus, e.g. wikitext2_perplexity"),
    ("perplexity", "percent", "the same, when the audit has exactly one corpus"),
)


def _interval(name: str, row: Mapping[str, Any], key: str, scale: float, unit: Unit, description: str) -> GateValue:
    def scaled(k: str) -> float | None:
        x = row.get(k)
        return None if x is None else scale * float(x)

    return GateValue(name, scale * float(row[key]), scaled("ci_low"), scaled("ci_high"), unit, description)


def gate_values(report: Mapping[str, Any]) -> dict[str, dict[str, GateValue]]:  # PROVISIONAL, see module doc
    """tuned model -> measure name -> its change against the base, from a parsed report.json."""
    sections = report.get("sections", {})
    tuned = [m for m in report.get("models", {}) if m != report.get("base")]
    out: dict[str, dict[str, GateValue]] = {m: {} for m in tuned}
    style = sections.get("style", {})
    for m, row in style.get("capture", {}).get("deltas", {}).items():
        out[m]["style_capture"] = _interval("style_capture", row, "delta", 100, "points", MEASURES[0][2])
    for m, row in style.get("adherence", {}).get("deltas", {}).items():
        out[m]["adherence"] = _interval("adherence", row, "delta", 1, "value", MEASURES[1][2])
    for m, row in sections.get("task", {}).get("deltas", {}).items():
        out[m]["rouge_l"] = _interval("rouge_l", row["rouge_l"], "delta", 100, "points", MEASURES[2][2])
    forgetting = sections.get("forgetting", {})
    rule = forgetting.get("mc_score", "acc")
    for bench, rows in forgetting.get("multiple_choice", {}).items():
        for m in tuned:
            if m in rows and rows[m].get("delta") is not None:
                name = f"{bench}_{rule}"
                out[m][name] = _interval(name, rows[m], "delta", 100, "points", f"{bench}: change in {rule}")
    corpora = forgetting.get("perplexity", {})
    for corpus, rows in corpora.items():
        for m in tuned:
            if m in rows and rows[m].get("relative_change") is not None:
                row = {"change": rows[m]["relative_change"], "ci_low": rows[m].get("change_ci_low"),
                       "ci_high": rows[m].get("change_ci_high")}
                names = [f"{corpus}_perplexity"] + (["perplexity"] if len(corpora) == 1 else [])
                for name in names:
                    out[m][name] = _interval(name, row, "change", 100, "percent", f"{corpus}: relative change in perplexity")
    return out


def read_gate_values(path: str | Path) -> dict[str, dict[str, GateValue]]:
    """:func:`gate_values` of a report.json file; a missing or unreadable file is a UserError."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"audit report not found: {p}")
    try:
        return gate_values(json.loads(p.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{p}: not an audit report.json ({type(exc).__name__}: {exc})") from None


def could_be_measure(name: str) -> bool:
    """True when ``name`` is a fixed measure name or has a per-file measure's form (``<file>_acc`` ...): the
    check that can run before the audit, when the files' stems are not yet read."""
    fixed = {n for n, _, _ in MEASURES if not n.startswith("<")}
    suffixes = tuple(n.split(">", 1)[1] for n, _, _ in MEASURES if n.startswith("<"))
    return name in fixed or (name.endswith(suffixes) and not name.startswith(suffixes))


def static_names() -> list[str]:
    """The names a typo is matched against before the audit (per-file names shown as piqa_*, wikitext2_*)."""
    fixed = [n for n, _, _ in MEASURES if not n.startswith("<")]
    return fixed + ["piqa_acc", "piqa_acc_norm", "wikitext2_perplexity"]


def list_measures() -> str:
    """The text of ``sftlab audit --list-measures``."""
    width = max(len(n) for n, _, _ in MEASURES)
    lines = ["Measures --fail-on can check (the change of each tuned model against the base, in the unit shown):"]
    lines += [f"  {name:<{width}}  {unit:<7}  {text}" for name, unit, text in MEASURES]
    lines.append("A check is MEASURE OP NUMBER (OP: > < >= <=), e.g. style_capture>20, adherence<-0.05, piqa_acc<-2, "
                 "perplexity>+5%. Exit 3 when any check fails; --fail-on-interval fails only when the whole 95% "
                 "interval is past the threshold.")
    return "\n".join(lines)
