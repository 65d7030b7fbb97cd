"""What one audit measure is: a :class:`Measure`, and the sweep :class:`Column` it may fill.

A measure turns what the audit produced (every model's answers and scores, in the
:class:`~sftlab.audit.measures.context.AuditContext`) into one report section, and reads that section back,
from report.json alone, as sweep cells and gate values. :mod:`sftlab.audit.measures.registry` finds every
measure of this package and runs them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sftlab.audit.gate_value import GateValue
from sftlab.audit.measures.context import AuditContext, LoadedModel
from sftlab.audit.report.section import Section
from sftlab.config import AuditConfig
from sftlab.data.records import Message
from sftlab.settings import StrictModel


@dataclass(frozen=True)
class Column:
    """One column of the sweep's comparison table: where the number comes from and how to read it."""

    key: str
    label: str
    higher_is_better: bool | None  # None: cost or context, no better direction
    percent: bool = False
    digits: int = 3
    # "outcome": what the fine-tune did on its task and to diversity; "style": how its answers to the audit
    # prompts read; "forgetting": what it lost elsewhere, and the forecast of it; "cost": what it took to
    # train. The report draws one table per group, so none is too wide for a page.
    group: str = "outcome"
    # Where the column stands in the table (ascending): the sweep's own columns and every measure's share
    # one scale, so a measure places its columns beside related ones without a central list.
    rank: int = 0

    def to_json(self) -> dict[str, Any]:
        """The column as sweep.json records it (its rank is only an ordering, not part of the table)."""
        return {"key": self.key, "label": self.label, "higher_is_better": self.higher_is_better,
                "percent": self.percent, "digits": self.digits, "group": self.group}


# A section's data (as report.json holds it), the base's name and one tuned model's name.
SweepRow = Callable[[dict[str, Any], str, str], dict[str, Any]]
Gates = Callable[[dict[str, Any], str, str], Sequence[GateValue]]


@dataclass(frozen=True)
class Measure:
    """One audit measure, whole.

    - ``name``: its report section's key in report.json, and the name ``--list-measures`` shows.
    - ``order``: its place in the report (ascending); a measure may read the sections of measures before it
      from ``ctx.results``.
    - ``section``: builds the section (table with intervals, HTML/Markdown, plots, headline findings) from
      the audit context; None when the audit lacks its inputs.
    - ``columns`` and ``row``: the sweep cells it fills, read from its section's data for one tuned model.
    - ``gates``: the changes it offers the pass/fail gate, read from its section's data for one tuned model.
    - ``opt_in``: it runs only when asked for by name (``run_audit(cfg, measures=[name])``), e.g. the
      synthetic world's judge, which only means something on a world's prompts.
    - ``prompts``: a prompt set of its own, read from the config before any model loads; the audit samples
      K answers per prompt from every model and hands them over as ``ctx.own_samples(name)``; with
      ``own_decoding: greedy``, one greedy answer per prompt instead (refusal judges read greedy answers,
      as HarmBench does).
    - ``settings``: the model of its own settings, given in the audit config as ``measures: {name: {...}}``
      and validated before any model loads (:func:`~sftlab.audit.measures.registry.settings_of`).
    - ``check``: a check of its own inputs, run before any model loads (a bad one raises a UserError).
    - ``score``: scores each model itself, while the audit holds it loaded (in the audit's precision, on its
      device): called once per model, base first; what it returns (JSON-able) is ``ctx.own_scores(name)``.
      The lm-eval measure runs lm-evaluation-harness this way.
    """

    name: str
    description: str
    order: int
    section: Callable[[AuditContext], Section | None]
    columns: tuple[Column, ...] = ()
    row: SweepRow | None = None
    gates: Gates | None = None
    opt_in: bool = False
    prompts: Callable[[AuditConfig], list[list[Message]]] | None = None
    own_decoding: Literal["sampled", "greedy"] = "sampled"
    settings: type[StrictModel] | None = None
    check: Callable[[AuditConfig], None] | None = None
    score: Callable[[LoadedModel], Any] | None = None


def delta_gate(name: str, delta: dict[str, Any] | None, unit: str, description: str, scale: float = 1.0,
               key: str = "delta") -> list[GateValue]:
    """A gate value from a ``{delta, ci_low, ci_high}`` entry of a section (scaled: 100 for points), or none
    when the entry or its change is missing (report.json writes NaN as null)."""
    if not delta or delta.get(key) is None:
        return []
    low, high = delta.get("ci_low"), delta.get("ci_high")
    return [GateValue(name, scale * delta[key], None if low is None else scale * low,
                      None if high is None else scale * high, unit, description)]  # type: ignore[arg-type]
