"""report.md: the same sections and summary as report.html, as Markdown (plots linked from plots/)."""

from __future__ import annotations

from collections.abc import Sequence

from sftlab.audit.report.section import Finding, Section


def render_markdown(sections: Sequence[Section], findings: Sequence[Finding], models: dict[str, str], base: str,
                    subtitle: str) -> str:
    """The whole report as Markdown."""
    lines = ["# sftlab audit: what the fine-tune cost", "", subtitle, ""]
    lines += [f"- **{name}**{' (base)' if name == base != 'base' else ''}: `{path}`" for name, path in models.items()]
    lines += ["", "## Summary", ""]
    for model in (m for m in models if m != base):
        lines.append(f"**{model}**")
        lines.append("")
        mine = [f for f in findings if f.model == model]
        for kind in ("lost", "gained", "note"):
            lines += [f"- {kind}: {f.text}" if kind != "note" else f"- {f.text}" for f in mine if f.kind == kind]
        if not any(f.kind in ("lost", "gained") for f in mine):
            lines.append("- no loss or gain that clears its interval or threshold")
        lines.append("")
    for s in sections:
        lines += [f"## {s.title}", "", s.markdown, ""]
    return "\n".join(lines)
