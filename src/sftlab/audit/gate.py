"""The audit's pass/fail gate for CI: ``sftlab audit --fail-on 'style_capture>20,piqa_acc<-2'``.

A check names a measure, a direction and a threshold in the measure's own unit (points, percent or value; a
trailing ``%`` is allowed, and only, on percent measures). A check *fails* a tuned model when the measured
change is past the threshold (``>``: above it, ``<``: below it; ``>=``/``<=`` include it). Each failed check
also says whether the whole 95% interval is past the threshold: then the failure is not the noise of a small
probe set. With ``interval_only`` (``--fail-on-interval``) a check fails only in that case.

Pure functions over ``Mapping[str, GateValue]`` (one mapping per tuned model), so the gate can be tested on
a saved report. The values themselves come from the measures (:func:`sftlab.audit.gate_values.gate_values`).
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from sftlab.audit.gate_value import GateValue
from sftlab.errors import UserError

# Exit status of an audit whose gate failed (2 stays a user error).
GATE_FAILED = 3

_OPS: dict[str, Callable[[float, float], bool]] = {">": operator.gt, "<": operator.lt, ">=": operator.ge,
                                                  "<=": operator.le}
_CHECK = re.compile(r"^\s*(?P<name>[A-Za-z][\w.-]*)\s*(?P<op>>=|<=|>|<)\s*"
                    r"(?P<value>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<pct>%?)\s*$")


@dataclass(frozen=True)
class Check:
    """One parsed check: fail when the change of ``name`` is ``op`` ``threshold``."""

    name: str
    op: str
    threshold: float
    percent_sign: bool  # written with a trailing %
    text: str  # as the user wrote it

    def past(self, x: float) -> bool:
        """True when ``x`` is past the threshold."""
        return _OPS[self.op](x, self.threshold)


def parse_checks(expressions: Iterable[str]) -> list[Check]:
    """Checks from ``--fail-on`` values, each one check or several separated by commas.

    A check that does not parse is a UserError naming it and the form expected.
    """
    checks = []
    for expr in expressions:
        for part in (p.strip() for p in expr.split(",")):
            if not part:
                continue
            m = _CHECK.match(part)
            if m is None:
                raise UserError(f"--fail-on: cannot read {part!r}; a check is MEASURE OP NUMBER, with OP one of "
                                "> < >= <= and the number in the measure's unit, e.g. style_capture>20, "
                                "adherence<-0.05, piqa_acc<-2, perplexity>+5% (sftlab audit --list-measures)")
            checks.append(Check(m["name"], m["op"], float(m["value"]), bool(m["pct"]), part))
    if not checks:
        raise UserError("--fail-on: no check given")
    return checks


def check_names(checks: Sequence[Check], known: Iterable[str]) -> None:
    """A UserError when a check names no measure in ``known``, naming the closest one."""
    known = sorted(set(known))
    for check in checks:
        if check.name not in known:
            close = difflib.get_close_matches(check.name, known, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(f"--fail-on: unknown measure {check.name!r} in {check.text!r}{hint} This audit offers: "
                            f"{', '.join(known) or 'none'} (sftlab audit --list-measures)")


@dataclass(frozen=True)
class Verdict:
    """One check on one tuned model."""

    model: str
    check: Check
    value: GateValue
    past: bool  # the change is past the threshold
    interval_past: bool  # the whole 95% interval is past it (False when there is no interval)
    failed: bool  # what the gate counts: past, or interval_past under --fail-on-interval


def _interval_past(check: Check, v: GateValue) -> bool:
    if v.low is None or v.high is None or not (math.isfinite(v.low) and math.isfinite(v.high)):
        return False
    # The interval is past the threshold when its nearer end is: its low end for >, its high end for <.
    return check.past(v.low) if check.op.startswith(">") else check.past(v.high)


def evaluate(checks: Sequence[Check], values: Mapping[str, Mapping[str, GateValue]],
             interval_only: bool = False) -> list[Verdict]:
    """Every check on every tuned model of ``values`` (model -> measure name -> value).

    A name no model offers, or a ``%`` on a measure not in percent, is a UserError. A model that lacks a
    measure another model has is skipped for that check. A non-finite change fails no check.
    """
    check_names(checks, {n for per in values.values() for n in per})
    verdicts = []
    for check in checks:
        for model, per in values.items():
            v = per.get(check.name)
            if v is None:
                continue
            if check.percent_sign and v.unit != "percent":
                raise UserError(f"--fail-on: {check.text!r}: {check.name} is measured in {v.unit}, not percent; "
                                "drop the %")
            past = math.isfinite(v.change) and check.past(v.change)
            interval = math.isfinite(v.change) and _interval_past(check, v)
            verdicts.append(Verdict(model, check, v, past, interval, interval if interval_only else past))
    return verdicts


def _fmt(x: float, unit: str) -> str:
    text = f"{x:+.4g}"
    return f"{text}%" if unit == "percent" else f"{text} points" if unit == "points" else text


def describe(verdict: Verdict) -> str:
    """One line for a failed (or passed) check: the change, its interval, and whether the interval clears the
    threshold too."""
    v, c = verdict.value, verdict.check
    threshold = _fmt(c.threshold, v.unit)
    interval = (f"95% CI [{_fmt(v.low, v.unit)}, {_fmt(v.high, v.unit)}]" if v.low is not None and v.high is not None
                else "no interval")
    if verdict.interval_past:
        tail = "the whole interval is past the threshold too"
    elif v.low is None or v.high is None:
        tail = "no interval to tell it from noise"
    else:
        tail = "the interval reaches back over the threshold, so this may be noise of the probe set"
    status = "FAIL" if verdict.failed else "warn" if verdict.past else "pass"
    return (f"{status} {verdict.model}: {c.name} {_fmt(v.change, v.unit)} ({interval}) {c.op} {threshold}"
            f" [{c.text}]: {tail}")


def gate(checks: Sequence[Check], values: Mapping[str, Mapping[str, GateValue]],
         interval_only: bool = False) -> tuple[int, list[str]]:
    """(exit status, one line per check past its threshold): :data:`GATE_FAILED` when any check failed, else 0.

    Under ``interval_only`` a change past the threshold whose interval is not gets a ``warn`` line and does not
    fail the gate.
    """
    verdicts = evaluate(checks, values, interval_only)
    return (GATE_FAILED if any(v.failed for v in verdicts) else 0), [describe(v) for v in verdicts if v.past]
