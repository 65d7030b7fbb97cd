"""The sweep's comparison: sweep.json (every row and the aggregates), sweep.md, sweep.html and Pareto plots."""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from sftlab import __version__
from sftlab.audit.report import plots
from sftlab.audit.report.html import render_html
from sftlab.audit.report.json_report import to_jsonable
from sftlab.audit.report.section import Finding, Section, Table, image_html
from sftlab.audit.report.sections import PPL_THRESHOLD
from sftlab.config import SweepConfig
from sftlab.recipes.sweep_forecast import forecast_section
from sftlab.recipes.sweep_table import COLUMNS, GROUPS, Column, format_cell, pareto_front

TASK_AXIS = ("task_score", "task score (higher is better)")
PARETO_PLOTS = (
    # (file, x column, x label, x is "higher is better")
    ("pareto_diversity.png", "diversity_kept_per_input", "diversity kept per input (% of base)", True),
    ("pareto_forgetting.png", "delta_perplexity", "Δ perplexity on reference text (lower is better)", False),
)


def _task_axis(table: dict[str, Any]) -> tuple[str, str]:
    """Task score when every strategy has one, else eval loss (lower is better)."""
    if all(s["columns"]["task_score"]["mean"] is not None for s in table["strategies"].values()):
        return TASK_AXIS
    return "eval_loss", "eval loss (lower is better)"


def _label_rows(xs: list[float], ys: list[float], near_x: float = 0.12, near_y: float = 0.04) -> list[int]:
    """For each point, which row of a label stack it gets: a point within ``near_x`` / ``near_y`` of the
    axes' ranges of an earlier point shares that point's stack, so their labels go one above the other
    instead of overlapping (labels run to the right of their point, hence the wider ``near_x``)."""
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    anchors: list[int] = []  # the first point of each stack
    counts: dict[int, int] = {}
    rows = []
    for i, (x, y) in enumerate(zip(xs, ys)):
        anchor = next((a for a in anchors if abs(x - xs[a]) / span_x < near_x and abs(y - ys[a]) / span_y < near_y), None)
        if anchor is None:
            anchors.append(i)
            counts[i] = 0
            anchor = i
        rows.append(counts[anchor])
        counts[anchor] += 1
    return rows


def pareto_plot(table: dict[str, Any], x_key: str, x_label: str, x_higher: bool) -> bytes | None:
    """Strategies as points with ±std error bars; the Pareto-optimal ones are joined and labelled in bold."""
    y_key, y_label = _task_axis(table)
    y_higher = y_key == "task_score"
    names, xs, ys, xerr, yerr = [], [], [], [], []
    for name, s in table["strategies"].items():
        x, y = s["columns"][x_key], s["columns"][y_key]
        if x["mean"] is None or y["mean"] is None:
            continue
        scale = 100.0 if x_key.startswith("diversity") else 1.0
        names.append(name)
        xs.append(x["mean"] * scale)
        ys.append(y["mean"])
        xerr.append((x["std"] or 0.0) * scale)
        yerr.append(y["std"] or 0.0)
    if len(names) < 2:
        return None
    # The front is computed with both axes turned into "higher is better".
    oriented = [(x if x_higher else -x, y if y_higher else -y) for x, y in zip(xs, ys)]
    front = sorted(pareto_front(oriented), key=lambda i: xs[i])
    fig, ax = plots.plt.subplots(figsize=(6.4, 4.2))
    plots._style(ax)
    colors = plots.model_colors(["-", *names], "-")
    stacked = _label_rows(xs, ys)
    for i, name in enumerate(names):
        ax.errorbar(xs[i], ys[i], xerr=xerr[i], yerr=yerr[i], fmt="o", color=colors[name], capsize=3, ms=7)
        ax.annotate(name, (xs[i], ys[i]), textcoords="offset points", xytext=(6, 5 + 10 * stacked[i]), fontsize=8,
                    fontweight="bold" if i in front else "normal", color=colors[name])
    ax.plot([xs[i] for i in front], [ys[i] for i in front], "--", color="#555", lw=1, label="Pareto front")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return plots._png(fig)


def summary_rule(seeds: int) -> str:
    """The rule the headline follows, said on the page (see :func:`seed_findings`)."""
    per_seed = ("its seed's audit" if seeds == 1
                else f"every one of its {seeds} seeds' audits (same measure, same direction)")
    rule = (f"A strategy's loss or gain is stated when {per_seed} found it. An audit states a change when its "
            f"95% interval excludes zero, and a perplexity change only when it is also at least {PPL_THRESHOLD:.0%}.")
    if seeds > 1:
        rule += " A change that only some seeds found is listed as a note."
    return rule


def seed_findings(strategy: str, reports: Sequence[tuple[int, dict[str, Any] | None]]) -> list[Finding]:
    """A strategy's headline from its seeds' report.json documents (None: that seed has no report).

    A loss or gain is stated when every seed's audit found it: the same measure (a finding's ``key``, else
    its text) in the same direction, each under the audit's own rule (interval excluding zero, and the
    perplexity threshold). A change only some seeds found becomes a note, so nothing is hidden and nothing
    is claimed that a seed contradicts. A missing report counts as a seed that found nothing.
    """
    found: dict[tuple[str, str], dict[int, str]] = {}  # (measure, kind) -> seed -> text, first seen first
    for seed, report in reports:
        if report is None:
            continue
        tuned = set(report["models"]) - {report["base"]}
        for f in report["summary"]:
            if f["model"] in tuned and f["kind"] in ("lost", "gained"):
                found.setdefault((f.get("key") or f["text"], f["kind"]), {})[seed] = f["text"]
    findings = []
    n = len(reports)
    for (key, kind), by_seed in found.items():
        texts = "; ".join(f"seed {seed}: {text}" for seed, text in by_seed.items())
        if len(by_seed) == n:
            findings.append(Finding(strategy, kind, next(iter(by_seed.values())) if n == 1 else texts, key))
        else:
            findings.append(Finding(strategy, "note", f"{kind} in {len(by_seed)} of {n} seeds only ({texts})", key))
    findings += [Finding(strategy, "note", f"seed {seed}: no audit report.json") for seed, r in reports if r is None]
    return findings


def read_findings(out: Path, table: dict[str, Any]) -> list[Finding]:
    """Every strategy's headline, from the audit report.json of each of its runs under ``out/runs``."""
    findings = []
    for name, s in table["strategies"].items():
        reports = []
        for seed in s["seeds"]:
            path = out / "runs" / name / f"seed{seed}" / "audit" / "report.json"
            reports.append((seed, json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None))
        findings += seed_findings(name, reports)
    return findings


def summary_markdown(findings: Sequence[Finding], strategies: Sequence[str], rule: str) -> str:
    """The headline as Markdown: per strategy, its losses, gains and notes."""
    lines = ["## What the fine-tune cost, and what it bought", "", rule, ""]
    for name in strategies:
        mine = [f for f in findings if f.model == name]
        lines += [f"**{name}**", ""]
        lines += [f"- {f.kind}: {f.text}" for kind in ("lost", "gained") for f in mine if f.kind == kind]
        if not any(f.kind in ("lost", "gained") for f in mine):
            lines.append("- no loss or gain that clears its interval or threshold")
        lines += [f"- {f.text}" for f in mine if f.kind == "note"]
        lines.append("")
    return "\n".join(lines)


def comparison_table(table: dict[str, Any], group: str = "outcome") -> Table:
    """Strategies as rows, the ``group``'s columns of :data:`sftlab.recipes.sweep_table.COLUMNS`, cells ``mean ± std``.

    A cell may wrap before its ``±`` only (a no-break space follows it), so a narrow page puts the std
    under the mean instead of cutting the table off.
    """

    def header(c: Column) -> str:
        arrow = {True: " ↑", False: " ↓", None: ""}[c.higher_is_better]
        return c.label + arrow

    # A column no run of this sweep measured (the world's genres on a real model, say) is left out.
    columns = [c for c in COLUMNS if c.group == group
               and any(s["columns"][c.key]["mean"] is not None for s in table["strategies"].values())]
    rows = [[name, str(len(s["seeds"]))] + [format_cell(c, s["columns"][c.key]).replace(" ± ", " ±\u00a0")
                                            for c in columns]
            for name, s in table["strategies"].items()]
    return Table(["strategy", "seeds"] + [header(c) for c in columns], rows)


def write_sweep_report(out: Path, table: dict[str, Any], cfg: SweepConfig) -> Path:
    """Write sweep.json, sweep.md, sweep.html and plots/; returns the path of sweep.html."""
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    seeds = len(cfg.seeds)
    intro = (f"{len(table['strategies'])} strategies x {seeds} seed{'s' if seeds > 1 else ''} on base "
             f"{cfg.base_model}. Cells are the mean ± sample std over seeds (no std with one seed). ↑/↓ marks the "
             "better direction. Diversity kept is the tuned model's EAD as a share of the base's; Δ are tuned minus "
             "base; cost is wall time, peak memory (GPU allocated, or process peak RSS on CPU) and trainable "
             "parameters. Each run's full audit is in runs/<strategy>/seed<k>/audit/report.html.")
    tables_html, tables_md = [], []
    for group, heading in GROUPS.items():
        t = comparison_table(table, group)
        if len(t.headers) <= 2:  # no column of this group was measured by any run
            continue
        tables_html.append((f"<h3>{html.escape(heading)}</h3>" if heading else "") + t.to_html())
        tables_md.append((f"### {heading}\n\n" if heading else "") + t.to_markdown())
    images: dict[str, bytes] = {}
    figures_html, figures_md = [], []
    for name, x_key, x_label, x_higher in PARETO_PLOTS:
        png = pareto_plot(table, x_key, x_label, x_higher)
        if png is None:
            continue
        images[name] = png
        (plots_dir / name).write_bytes(png)
        figures_html.append(image_html(png, x_label))
        figures_md.append(f"![{x_label}](plots/{name})")
    links = "".join(
        f'<li><a href="runs/{r["strategy"]}/seed{r["seed"]}/audit/report.html">{r["strategy"]} seed {r["seed"]}</a></li>'
        for r in table["rows"])
    section = Section(
        key="comparison", title="Strategies compared", data=table,
        html=(f"<p>{html.escape(intro)}</p>{''.join(tables_html)}{''.join(figures_html)}"
              f"<h3>Per-run audits</h3><ul>{links}</ul>"),
        markdown=f"{intro}\n\n" + "\n\n".join(tables_md + figures_md),
        images=images)
    forecast = forecast_section(table)  # None when no run's audit had sft_data
    sections = [section] + ([forecast] if forecast else [])

    strategies = {name: str(out / "runs" / name) for name in table["strategies"]}
    findings = read_findings(out, table)
    rule = summary_rule(seeds)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    doc = to_jsonable({"meta": {"sftlab_version": __version__, "created": created},
                       "config": cfg.model_dump(mode="json"), "summary_rule": rule,
                       "summary": [asdict(f) for f in findings], **table,
                       **({"forecast": forecast.data} if forecast else {})})
    (out / "sweep.json").write_text(json.dumps(doc, indent=2, allow_nan=False))
    forecast_md = f"\n\n## {forecast.title}\n\n{forecast.markdown}" if forecast else ""
    (out / "sweep.md").write_text(f"# sftlab sweep\n\n{summary_markdown(findings, list(strategies), rule)}\n"
                                  f"## {section.title}\n\n{section.markdown}{forecast_md}\n")
    page = render_html(sections, findings, strategies, "", plots.model_colors(list(strategies), ""),
                       subtitle=f"sweep of {len(strategies)} strategies on {cfg.base_model}",
                       config_yaml=yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False),
                       version=__version__, created=created, title="sftlab sweep: strategies compared",
                       summary_rule=rule)
    (out / "sweep.html").write_text(page, encoding="utf-8")
    return out / "sweep.html"
