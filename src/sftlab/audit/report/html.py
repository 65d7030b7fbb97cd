"""report.html: one self-contained page (inline CSS, plots as base64 PNGs, no scripts).

Layout: a header naming the models, the headline summary (per tuned model: what was lost, what was
gained, notes), then one card per section, then the config used.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from importlib import resources
from string import Template
from typing import Any

from sftlab.audit.report.section import Finding, Section
from sftlab.audit.report.token_view import TOKEN_CSS


def _css_color(color: Any) -> str:
    if isinstance(color, str):
        return color
    return "#" + "".join(f"{round(255 * c):02x}" for c in color[:3])


def summary_html(findings: Sequence[Finding], tuned: Sequence[str], rule: str = "") -> str:
    """The headline: one card per tuned model listing its losses, then gains, then notes; ``rule`` (when
    given) says under the heading when a change is called a loss or a gain."""
    order = {"lost": 0, "gained": 1, "note": 2}
    cards = []
    for model in tuned:
        items = sorted((f for f in findings if f.model == model), key=lambda f: order[f.kind])
        if not any(f.kind in ("lost", "gained") for f in items):
            items.insert(0, Finding(model, "note", "no loss or gain that clears its interval or threshold"))
        lis = "".join(
            f'<li class="{f.kind}">' + (f"<b>{f.kind}</b> · " if f.kind != "note" else "") + f"{html.escape(f.text)}</li>"
            for f in items)
        cards.append(f'<div class="model"><h3>{html.escape(model)}</h3><ul>{lis}</ul></div>')
    rule_html = f'<p class="note rule">{html.escape(rule)}</p>' if rule else ""
    return ('<div class="summary" id="summary"><h2>What the fine-tune cost, and what it bought</h2>'
            f'{rule_html}<div class="models">{"".join(cards)}</div></div>')


def render_html(
    sections: Sequence[Section],
    findings: Sequence[Finding],
    models: dict[str, str],
    base: str,
    colors: dict[str, Any],
    subtitle: str,
    config_yaml: str,
    version: str,
    created: str,
    title: str = "sftlab audit: what the fine-tune cost",
    summary_rule: str = "",
) -> str:
    """The whole report page; ``summary_rule`` is shown under the headline (see :func:`summary_html`)."""
    template = Template(resources.files("sftlab.audit.report").joinpath("template.html").read_text(encoding="utf-8"))
    chips = "".join(
        f'<span class="chip" title="{html.escape(path)}"><i style="background:{_css_color(colors[name])}"></i>'
        f'{html.escape(name)}{" (base)" if name == base != "base" else ""}</span>'
        for name, path in models.items())
    nav = '<a href="#summary">Summary</a>' + "".join(
        f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in sections) + '<a href="#config">Config</a>'
    body = "\n".join(f'<section class="card" id="{s.key}"><h2>{html.escape(s.title)}</h2>{s.html}</section>'
                     for s in sections)
    return template.substitute(
        title=title,
        subtitle=html.escape(subtitle),
        chips=chips,
        nav=nav,
        summary=summary_html(findings, [m for m in models if m != base], summary_rule),
        sections=body,
        config=html.escape(config_yaml),
        token_css=TOKEN_CSS,
        version=html.escape(version),
        created=html.escape(created),
    )
