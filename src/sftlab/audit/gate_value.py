"""The value a measure offers to the audit's pass/fail gate (``sftlab audit --fail-on``).

Each audit measure names the changes it can be gated on (``style_capture``, ``piqa_acc``, ``perplexity``,
...), one :class:`GateValue` per tuned model and name. The gate compares ``change`` (or, with
``--fail-on-interval``, the whole 95% interval) with the user's threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# points: a share or accuracy as percentage points (52.0 -> 48.5 is -3.5); percent: relative change of a
# positive quantity, 100 * (tuned - base) / base (perplexity); value: the measure's own unit (a cosine).
Unit = Literal["points", "percent", "value"]


@dataclass(frozen=True)
class GateValue:
    """One gateable change of one tuned model against the base, with its 95% interval when known."""

    name: str
    change: float
    low: float | None
    high: float | None
    unit: Unit
    description: str
