"""The gateable changes of a saved audit report, and the names ``--fail-on`` takes.

The values come from the measures themselves (:func:`sftlab.audit.measures.registry.gate_values`: each
measure reads its own section of report.json); :data:`MEASURES` names them for ``--list-measures`` and for
the spell check that runs before an audit has read its files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sftlab.audit.gate_value import GateValue, Unit
from sftlab.audit.measures import registry
from sftlab.errors import UserError

# name (``<benchmark>``/``<corpus>``/``<metric>`` stand for a file's stem or a metric), unit, what the change is.
MEASURES: tuple[tuple[str, Unit, str], ...] = (
    ("style_capture", "points", "change in the share of sampled answers the style classifier calls SFT-style "
                                "(needs --sft-data)"),
    ("adherence", "value", "change in the mean prompt-answer embedding cosine (needs an embedding model)"),
    ("<metric>", "value", "a diversity metric's change: distinct_1, distinct_2, ead, self_bleu, ... (the report's "
                          "diversity table)"),
    ("shifted_tokens", "points", "change in the share of answer tokens the base ranks below its top 3"),
    ("copying", "points", "change in the share of answers that copy a span of an SFT record (needs --sft-data)"),
    ("rouge_l", "points", "change in mean ROUGE-L F of greedy answers against the eval set's references"),
    ("<benchmark>_acc", "points", "change in multiple-choice accuracy (mc_score: acc), e.g. piqa_acc"),
    ("<benchmark>_acc_norm", "points", "the same under mc_score: acc_norm"),
    ("perplexity_<corpus>", "percent", "relative change in perplexity on a text corpus, e.g. perplexity_wikitext"),
    ("perplexity", "percent", "the largest relative perplexity change over the audit's corpora"),
    ("forecast_kl", "value", "the forgetting forecast: KL(base || tuned) per token on the SFT prompts"),
    ("refusal", "points", "change in the refusal rate on harmful prompts (the safety measure)"),
    ("over_refusal", "points", "change in the refusal rate on benign look-alike prompts (the safety measure)"),
    ("lmeval_<task>_<metric>", "points", "change in an lm-eval task's figure (--lm-eval-tasks), e.g. lmeval_arc_easy_acc; "
                                         "points for a share (acc, acc_norm, exact_match), lm-eval's own unit "
                                         "otherwise; a filter other than none is appended: "
                                         "lmeval_gsm8k_exact_match_strict-match"),
)


def gate_values(report: Mapping[str, Any]) -> dict[str, dict[str, GateValue]]:
    """tuned model -> measure name -> its change against the base, from a parsed report.json."""
    return registry.gate_values(dict(report))


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
    fixed = {n for n, _, _ in MEASURES if "<" not in n}
    suffixes = tuple(n.split(">", 1)[1] for n, _, _ in MEASURES if n.startswith("<") and n != "<metric>")
    prefixes = tuple(n.split("<", 1)[0] for n, _, _ in MEASURES if n.endswith(">") and not n.startswith("<"))
    if name in fixed or name.startswith(prefixes):
        return True
    # A diversity metric's name, or a benchmark's: checked against the report once it exists.
    return "_" in name and not name.startswith(suffixes) and not name.endswith("_")


def static_names() -> list[str]:
    """The names a typo is matched against before the audit (per-file names shown as piqa_*, wikitext2_*)."""
    fixed = [n for n, _, _ in MEASURES if "<" not in n]
    return fixed + ["piqa_acc", "piqa_acc_norm", "distinct_2", "ead"]


def list_measures() -> str:
    """The text of ``sftlab audit --list-measures``."""
    width = max(len(n) for n, _, _ in MEASURES)
    lines = ["Measures --fail-on can check (the change of each tuned model against the base, in the unit shown):"]
    lines += [f"  {name:<{width}}  {unit:<7}  {text}" for name, unit, text in MEASURES]
    lines.append("A check is MEASURE OP NUMBER (OP: > < >= <=), e.g. style_capture>20, adherence<-0.05, piqa_acc<-2, "
                 "perplexity>+5%. Exit 3 when any check fails; --fail-on-interval fails only when the whole 95% "
                 "interval is past the threshold.")
    return "\n".join(lines)
