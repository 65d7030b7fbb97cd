"""The sweep's comparison table: its columns, how a cell is written, and the Pareto front.

Both the sweep (which fills the table) and its report (which draws it) import this module; it imports
neither, so the dependency runs one way: ``sweep -> sweep_report -> sweep_table`` and ``sweep -> sweep_table``.
The columns an audit measure fills come from that measure (:mod:`sftlab.audit.measures`), through the registry.
"""

from __future__ import annotations

from collections.abc import Sequence

from sftlab.audit.measures import registry
from sftlab.audit.measures.base import Column

# The report's tables, in order: group -> heading (the first group's table has none of its own).
GROUPS: dict[str, str] = {"outcome": "", "style": "Style and adherence", "forgetting": "Forgetting",
                          "cost": "Cost"}


# The sweep's own columns: what training left behind, beside the measures' columns (placed by rank).
OWN_COLUMNS: tuple[Column, ...] = (
    Column("eval_loss", "eval loss", False, rank=0),
    Column("train_seconds", "train time (s)", None, digits=1, group="cost", rank=140),
    Column("peak_memory_mb", "peak memory (MB)", None, digits=0, group="cost", rank=150),
    Column("trainable_params", "trainable params", None, digits=0, group="cost", rank=160),
)
# Every column of the table, in order: the sweep's own and every audit measure's (sftlab.audit.measures).
COLUMNS: tuple[Column, ...] = tuple(sorted(OWN_COLUMNS + registry.sweep_columns(), key=lambda c: c.rank))


def format_cell(column: Column, stats: dict[str, float | None]) -> str:
    """``mean ± std`` in the column's units; ``–`` when missing."""
    mean, std = stats["mean"], stats["std"]
    if mean is None:
        return "–"
    scale, unit = (100.0, "%") if column.percent else (1.0, "")
    digits = 1 if column.percent else column.digits
    text = f"{mean * scale:,.{digits}f}{unit}"
    if std is not None:
        text += f" ± {std * scale:,.{digits}f}{unit}"
    return text


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (both to be maximised)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 >= x and y2 >= y) and (x2 > x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return front
