"""The unit of the audit report: a section (data + HTML + Markdown) and its headline findings, and the
small rendering helpers the sections share.

The report is a list of sections, one per measure (:mod:`sftlab.audit.measures`).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class Finding:
    """One line of the headline summary: what a tuned model lost or gained (or a neutral note)."""

    model: str
    kind: Literal["lost", "gained", "note"]
    text: str
    # What was measured, without the numbers ("perplexity/wikitext"): the same key in two runs is the same
    # measure, which lets a sweep tell whether every seed found a change. Empty: the text is the key.
    key: str = ""


@dataclass
class Section:
    """One report section. ``data`` goes into report.json under ``key``; bodies are HTML and Markdown."""

    key: str
    title: str
    data: dict[str, Any]
    html: str
    markdown: str
    findings: list[Finding] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)  # PNGs, also saved under plots/


# --------------------------------------------------------------------------------------------------
# Small rendering helpers shared by the sections


def fmt(value: Any, digits: int = 3) -> str:
    """A number for display: fixed digits, '–' for missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_delta(value: float | None, digits: int = 3, ci: tuple[float | None, float | None] | None = None) -> str:
    """A signed delta, with its interval when given: ``+0.120 [+0.050, +0.190]``."""
    if value is None or math.isnan(value):
        return "–"
    text = f"{value:+.{digits}f}"
    if ci and ci[0] is not None and ci[1] is not None and not math.isnan(ci[0]):
        text += f" [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"
    return text


@dataclass
class Table:
    """A table rendered the same way into HTML and Markdown. Cells are already formatted strings.

    ``tones[r][c]`` (optional) is a CSS class for a cell ("good", "bad" or "").
    """

    headers: list[str]
    rows: list[list[str]]
    tones: list[list[str]] | None = None

    def to_html(self) -> str:
        """A ``<table>`` with escaped cells."""
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = []
        for r, row in enumerate(self.rows):
            cells = []
            for c, cell in enumerate(row):
                tone = self.tones[r][c] if self.tones else ""
                cls = f' class="{tone}"' if tone else ""
                cells.append(f"<td{cls}>{html.escape(cell)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        return (f'<div class="tablewrap"><table class="data"><thead><tr>{head}</tr></thead>'
                f'<tbody>{"".join(body)}</tbody></table></div>')

    def to_markdown(self) -> str:
        """A GitHub-flavoured Markdown table (pipes in cells escaped)."""
        def esc(s: str) -> str:
            return s.replace("|", "\\|").replace("\n", " ")

        lines = ["| " + " | ".join(map(esc, self.headers)) + " |", "|" + "---|" * len(self.headers)]
        lines += ["| " + " | ".join(map(esc, row)) + " |" for row in self.rows]
        return "\n".join(lines)


def tone(delta: float | None, higher_is_better: bool, significant: bool = True) -> str:
    """CSS tone of a delta: "good" / "bad" when it is significant, else ""."""
    if delta is None or math.isnan(delta) or delta == 0 or not significant:
        return ""
    return "good" if (delta > 0) == higher_is_better else "bad"


def excludes_zero(ci_low: float | None, ci_high: float | None) -> bool:
    """True when an interval lies entirely on one side of zero."""
    if ci_low is None or ci_high is None or math.isnan(ci_low) or math.isnan(ci_high):
        return False
    return ci_low > 0 or ci_high < 0


def image_html(png: bytes, alt: str) -> str:
    """A figure with the PNG inlined as base64, so report.html needs no other file."""
    data = base64.b64encode(png).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"></figure>'


def sequence_to_text(items: Sequence[str], limit: int = 12) -> str:
    """A short comma-separated list, with a count of what was left out."""
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def paragraph(text: str) -> str:
    """A ``<p>`` of escaped text."""
    return f"<p>{html.escape(text)}</p>"


def pct(value: float | None) -> str:
    """A share as a percentage with one decimal: ``12.5%``; '–' for missing or NaN."""
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def base_label(base: str) -> str:
    """The base's name as a table shows it: ``NAME (base)``, or ``base`` when that is its name."""
    return base if base == "base" else f"{base} (base)"


def points(d: dict[str, Any]) -> str:
    """A share's delta in percentage points with its interval: ``+59.0 pt [+48.1, +68.8]``."""
    return fmt_delta(100 * d["delta"], 1, (100 * d["ci_low"], 100 * d["ci_high"])) + " pt"
