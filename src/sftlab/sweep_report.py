"""The sweep's comparison: sweep.json (every row and the aggregates), sweep.md, sweep.html and Pareto plots."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from sftlab import __version__
from sftlab.audit.report import plots
from sftlab.audit.report.html import render_html
from sftlab.audit.report.json_report import to_jsonable
from sftlab.audit.report.section import Section, Table, image_html
from sftlab.config import SweepConfig
from sftlab.sweep import COLUMNS, Column, format_cell, pareto_front
from sftlab.sweep_forecast import forecast_section

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


def comparison_table(table: dict[str, Any]) -> Table:
    """Strategies as rows, columns as in :data:`sftlab.sweep.COLUMNS`, cells ``mean ± std``."""

    def header(c: Column) -> str:
        arrow = {True: " ↑", False: " ↓", None: ""}[c.higher_is_better]
        return c.label + arrow

    rows = [[name, str(len(s["seeds"]))] + [format_cell(c, s["columns"][c.key]) for c in COLUMNS]
            for name, s in table["strategies"].items()]
    return Table(["strategy", "seeds"] + [header(c) for c in COLUMNS], rows)


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
    t = comparison_table(table)
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
        html=f"<p>{intro}</p>{t.to_html()}{''.join(figures_html)}<h3>Per-run audits</h3><ul>{links}</ul>",
        markdown=f"{intro}\n\n{t.to_markdown()}\n\n" + "\n\n".join(figures_md), images=images)
    forecast = forecast_section(table)  # None when no run's audit had sft_data
    sections = [section] + ([forecast] if forecast else [])

    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    doc = to_jsonable({"meta": {"sftlab_version": __version__, "created": created},
                       "config": cfg.model_dump(mode="json"), **table,
                       **({"forecast": forecast.data} if forecast else {})})
    (out / "sweep.json").write_text(json.dumps(doc, indent=2, allow_nan=False))
    forecast_md = f"\n\n## {forecast.title}\n\n{forecast.markdown}" if forecast else ""
    (out / "sweep.md").write_text(f"# sftlab sweep\n\n{section.markdown}{forecast_md}\n")
    strategies = {name: str(out / "runs" / name) for name in table["strategies"]}
    page = render_html(sections, [], strategies, "", plots.model_colors(list(strategies), ""),
                       subtitle=f"sweep of {len(strategies)} strategies on {cfg.base_model}",
                       config_yaml=yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False),
                       version=__version__, created=created, title="sftlab sweep: strategies compared")
    (out / "sweep.html").write_text(page, encoding="utf-8")
    return out / "sweep.html"
