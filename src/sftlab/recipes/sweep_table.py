"""The sweep's comparison table: its columns, how a cell is written, and the Pareto front.

Both the sweep (which fills the table) and its report (which draws it) import this module; it imports
neither, so the dependency runs one way: ``sweep -> sweep_report -> sweep_table`` and ``sweep -> sweep_table``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    """One column of the comparison table: where the number comes from and how to read it."""

    key: str
    label: str
    higher_is_better: bool | None  # None: cost or context, no better direction
    percent: bool = False
    digits: int = 3
    # "outcome": what the fine-tune did on its task and to diversity; "style": how its answers to the audit
    # prompts read; "forgetting": what it lost elsewhere, and the forecast of it; "cost": what it took to
    # train. The report draws one table per group, so none is too wide for a page.
    group: str = "outcome"


# The report's tables, in order: group -> heading (the first group's table has none of its own).
GROUPS: dict[str, str] = {"outcome": "", "style": "Style and adherence", "forgetting": "Forgetting",
                          "cost": "Cost"}


COLUMNS: tuple[Column, ...] = (
    Column("eval_loss", "eval loss", False),
    Column("task_score", "task score", True),
    Column("style_capture", "answers in the SFT style (audit prompts)", False, percent=True, group="style"),
    Column("delta_adherence", "Δ prompt adherence (cosine)", True, group="style"),
    Column("play_style_other", "answers written as a play (other prompts)", False, percent=True, group="style"),
    Column("diversity_kept_per_input", "diversity kept, per input", True, percent=True),
    Column("diversity_kept_across_input", "diversity kept, across inputs", True, percent=True),
    Column("genres_covered", "genres covered (open prompts)", True, digits=1),
    Column("genre_entropy", "genre entropy (nats)", True),
    Column("delta_perplexity", "Δ perplexity (reference)", False, digits=2, group="forgetting"),
    Column("delta_benchmark", "Δ benchmark accuracy", True, percent=True, group="forgetting"),
    Column("delta_heldout_task", "Δ held-out task score", True, percent=True, group="forgetting"),
    Column("forecast_kl", "forecast: KL(base ‖ tuned) on SFT prompts", None, digits=4, group="forgetting"),
    Column("shifted", "shifted tokens", None, percent=True),
    Column("train_seconds", "train time (s)", None, digits=1, group="cost"),
    Column("peak_memory_mb", "peak memory (MB)", None, digits=0, group="cost"),
    Column("trainable_params", "trainable params", None, digits=0, group="cost"),
)


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
