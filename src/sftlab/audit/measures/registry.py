"""The audit's measures, found by discovery: every module of :mod:`sftlab.audit.measures` that defines a
module-level ``MEASURE`` (a :class:`~sftlab.audit.measures.base.Measure`) is one measure.

Adding a measure is adding one file to this package; nothing here names a measure. The audit runs them
(:func:`build_sections`) in their ``order``; the sweep reads their cells (:func:`sweep_columns`,
:func:`sweep_row`) and the gate their values (:func:`gate_values`) from a saved report.json alone.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import time
from collections.abc import Sequence
from functools import cache
from typing import Any

from sftlab.audit.gate_value import GateValue
from sftlab.audit.measures.base import Column, Measure
from sftlab.audit.measures.context import AuditContext
from sftlab.audit.report.section import Section
from sftlab.errors import UserError


@cache
def all_measures() -> tuple[Measure, ...]:
    """Every measure of the package, in report order."""
    import sftlab.audit.measures as package

    found: dict[str, Measure] = {}
    for info in pkgutil.iter_modules(package.__path__):
        measure = getattr(importlib.import_module(f"{package.__name__}.{info.name}"), "MEASURE", None)
        if isinstance(measure, Measure):
            if measure.name in found:
                raise RuntimeError(f"two measures are named {measure.name!r}")
            found[measure.name] = measure
    return tuple(sorted(found.values(), key=lambda m: (m.order, m.name)))


def get(name: str) -> Measure:
    """The measure called ``name``; an unknown name is a user error that suggests the closest."""
    known = {m.name: m for m in all_measures()}
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"unknown measure {name!r}{hint} (known: {', '.join(known)})")
    return known[name]


def describe() -> list[tuple[str, str]]:
    """(name, one-line description) of every measure, for ``sftlab audit --list-measures``; opt-in measures
    say so."""
    return [(m.name, m.description + (" (opt-in)" if m.opt_in else "")) for m in all_measures()]


def selected(extra: Sequence[str | Measure] = ()) -> list[Measure]:
    """The measures of one audit, in report order: every measure that is not opt-in, plus ``extra`` (opt-in
    measures by name, or measures of the caller's own that are not in this package)."""
    chosen = {m.name: m for m in all_measures() if not m.opt_in}
    for item in extra:
        measure = get(item) if isinstance(item, str) else item
        chosen[measure.name] = measure
    return sorted(chosen.values(), key=lambda m: m.order)


def build_sections(ctx: AuditContext, measures: Sequence[Measure],
                   seconds: dict[str, float] | None = None) -> list[Section]:
    """Every measure's section, in report order; each section's data also goes into ``ctx.results``, where
    the measures after it can read it. ``seconds`` (when given) receives each measure's time."""
    sections = []
    for measure in measures:
        started = time.perf_counter()
        section = measure.section(ctx)
        if seconds is not None:
            seconds[measure.name] = time.perf_counter() - started
        if section is not None:
            ctx.results[section.key] = section.data
            sections.append(section)
    return sections


def sweep_columns() -> tuple[Column, ...]:
    """Every measure's sweep columns, once each, in no particular order (the table sorts them by rank).

    Two measures may fill one column (the world's judged task score stands in for ROUGE-L) when they
    share the same :class:`Column`; two different columns under one key are a programming error.
    """
    columns: dict[str, Column] = {}
    for measure in all_measures():
        for column in measure.columns:
            if columns.setdefault(column.key, column) != column:
                raise RuntimeError(f"two different sweep columns are keyed {column.key!r}")
    return tuple(columns.values())


def sweep_row(report: dict[str, Any], tuned: str) -> dict[str, Any]:
    """One tuned model's sweep cells from its report.json: every measure whose section is there, in report
    order, so a later measure's cell replaces an earlier one's."""
    row: dict[str, Any] = {}
    for measure in all_measures():
        data = report["sections"].get(measure.name)
        if data is not None and measure.row is not None:
            row.update(measure.row(data, report["base"], tuned))
    return row


def gate_values(report: dict[str, Any]) -> dict[str, dict[str, GateValue]]:
    """tuned model -> gate name -> value, read from a saved report.json alone."""
    out: dict[str, dict[str, GateValue]] = {}
    base = report["base"]
    for tuned in (m for m in report["models"] if m != base):
        values: dict[str, GateValue] = {}
        for measure in all_measures():
            data = report["sections"].get(measure.name)
            if data is not None and measure.gates is not None:
                values.update({g.name: g for g in measure.gates(data, base, tuned)})
        out[tuned] = values
    return out
