"""The ``safety_tradeoff`` page of a demo plan: refusals kept against task quality and over-refusal.

For the sweep's base (in ``plans/safety.yaml`` the aligned model) and every strategy, from the runs' files
alone (``row.json`` and the audit's ``report.json``):

* refusal rate on the harmful prompts and over-refusal rate on the benign look-alikes (the ``safety``
  measure), with the change against the base and its paired-bootstrap 95% interval over prompts;
* task quality: the perplexity of the first reference corpus (the held-out scenes in the safety plan), with
  the relative change against the base and its paired-bootstrap 95% interval over documents;
* how deep the refusals that are left are: the share whose first three answer tokens are the base's
  (Qi et al. 2024).

A strategy's figure is the mean over its seeds (± the sample std with two or more); the intervals are seed
0's, which the note says. Writes ``safety_tradeoff.md``, ``safety_tradeoff.json`` and
``plots/safety_tradeoff.png`` under the demo's dir, each atomically.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from sftlab.errors import UserError
from sftlab.io import read_json_state, write_atomic


def _stats(values: list[float | None]) -> dict[str, float | None]:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return {"mean": None, "std": None}
    return {"mean": float(np.mean(clean)), "std": float(np.std(clean, ddof=1)) if len(clean) > 1 else None}


def _run_figures(report: dict[str, Any], tuned: str) -> dict[str, Any]:
    """One run's figures from its audit report: rates, changes with intervals, task perplexity."""
    safety = report["sections"].get("safety")
    if safety is None:
        raise UserError("safety_tradeoff: the runs' audits have no safety section; add `measures: {safety: {}}` "
                        "to the plan's audit")
    base = report["base"]
    out: dict[str, Any] = {"base": {}, "tuned": {}}
    for s, key in (("harmful", "refusal"), ("benign", "over_refusal")):
        b, t = safety["models"][base][s], safety["models"][tuned][s]
        out["base"][key] = b["rate"]
        out["base"][f"{key}_n"] = b["n"]
        out["tuned"][key] = t["rate"]
        out["tuned"][f"{key}_ci"] = [t["delta"], t["ci_low"], t["ci_high"]]
    out["tuned"]["opening_match"] = safety["models"][tuned]["harmful"].get("opening_match")
    ppl = (report["sections"].get("forgetting") or {}).get("perplexity") or {}
    if ppl:
        corpus, per = next(iter(ppl.items()))
        out["corpus"] = Path(corpus).name
        out["base"]["perplexity"] = per[base]["perplexity"]
        out["tuned"]["perplexity"] = per[tuned]["perplexity"]
        out["tuned"]["perplexity_ci"] = [per[tuned]["relative_change"], per[tuned]["change_ci_low"],
                                         per[tuned]["change_ci_high"]]
    return out


def collect(sweep_dir: Path) -> dict[str, Any]:
    """The page's figures: the base's and each strategy's (mean over seeds, seed 0's intervals)."""
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for row_file in sorted(sweep_dir.glob("runs/*/seed*/row.json")):
        row = read_json_state(row_file, "a sweep run's row")
        report = read_json_state(row_file.parent / "audit" / "report.json", "the run's audit report")
        runs.setdefault(row["strategy"], {})[row["seed"]] = _run_figures(report, f"{row['strategy']}/seed{row['seed']}")
    if not runs:
        raise UserError(f"safety_tradeoff: no finished run under {sweep_dir / 'runs'}")
    order = [s for s in _sweep_order(sweep_dir) if s in runs] + sorted(set(runs) - set(_sweep_order(sweep_dir)))
    first = next(iter(runs[order[0]].values()))
    doc: dict[str, Any] = {"corpus": first.get("corpus"), "base": first["base"], "strategies": {}}
    for name in order:
        seeds = runs[name]
        figures = {key: _stats([r["tuned"].get(key) for r in seeds.values()])
                   for key in ("refusal", "over_refusal", "perplexity", "opening_match")}
        zero = seeds.get(0, next(iter(seeds.values())))["tuned"]
        intervals = {key: zero.get(f"{key}_ci") for key in ("refusal", "over_refusal", "perplexity")}
        doc["strategies"][name] = {"seeds": sorted(seeds), **figures, "intervals_seed0": intervals}
    return doc


def _sweep_order(sweep_dir: Path) -> list[str]:
    path = sweep_dir / "sweep.json"
    if not path.is_file():
        return []
    return list(read_json_state(path, "the sweep's table").get("strategies", {}))


def _pct(stats: dict[str, float | None]) -> str:
    if stats["mean"] is None:
        return "–"
    text = f"{100 * stats['mean']:.1f}%"
    return text + (f" ± {100 * stats['std']:.1f}" if stats["std"] is not None else "")


def _ci(ci: list[float] | None, scale: float = 100.0, unit: str = " pt") -> str:
    if not ci:
        return "–"
    d, lo, hi = ci
    return f"{scale * d:+.1f}{unit} [{scale * lo:+.1f}, {scale * hi:+.1f}]"


def markdown(doc: dict[str, Any]) -> str:
    """The table, base first."""
    base = doc["base"]
    corpus = doc.get("corpus") or "reference"
    head = (f"| model | seeds | refusal (harmful, n={base['refusal_n']}) | Δ refusal | over-refusal (benign, "
            f"n={base['over_refusal_n']}) | Δ over-refusal | perplexity ({corpus}) | Δ perplexity | refusals with "
            "the base's first 3 tokens |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ppl = f"{base['perplexity']:.2f}" if base.get("perplexity") is not None else "–"
    lines = [head, f"| base | | {100 * base['refusal']:.1f}% | | {100 * base['over_refusal']:.1f}% | | {ppl} | | |"]
    for name, s in doc["strategies"].items():
        iv = s["intervals_seed0"]
        p = s["perplexity"]
        p_text = "–" if p["mean"] is None else f"{p['mean']:.2f}" + (f" ± {p['std']:.2f}" if p["std"] is not None else "")
        lines.append(f"| {name} | {len(s['seeds'])} | {_pct(s['refusal'])} | {_ci(iv['refusal'])} | "
                     f"{_pct(s['over_refusal'])} | {_ci(iv['over_refusal'])} | {p_text} | "
                     f"{_ci(iv['perplexity'], unit='%')} | {_pct(s['opening_match'])} |")
    note = ("Rates: mean over seeds (± sample std with two or more). Δ: change against the base with its paired "
            "bootstrap 95% interval over prompts (rates, in points) or documents (perplexity, relative), seed 0. "
            "Last column: the share of a model's refusals whose first three answer tokens are the base's answer's "
            "to the same prompt (Qi et al. 2024).")
    return "\n".join(lines) + "\n\n" + note + "\n"


def plot(doc: dict[str, Any]) -> bytes:
    """Refusal rate against task perplexity (left) and against over-refusal (right), base as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    base = doc["base"]
    for ax, x_key, x_label, scale in ((axes[0], "perplexity", f"perplexity on {doc.get('corpus') or 'reference'} "
                                       "(task quality; lower is better)", 1.0),
                                      (axes[1], "over_refusal", "over-refusal on benign look-alikes (%)", 100.0)):
        if base.get(x_key) is not None:
            ax.scatter([scale * base[x_key]], [100 * base["refusal"]], marker="*", s=180, color="black", zorder=3)
            ax.annotate("base", (scale * base[x_key], 100 * base["refusal"]), textcoords="offset points",
                        xytext=(6, 4), fontsize=8)
        for name, s in doc["strategies"].items():
            x, y = s[x_key], s["refusal"]
            if x["mean"] is None or y["mean"] is None:
                continue
            ax.errorbar([scale * x["mean"]], [100 * y["mean"]], xerr=[scale * (x["std"] or 0)],
                        yerr=[100 * (y["std"] or 0)], fmt="o", capsize=3)
            ax.annotate(name, (scale * x["mean"], 100 * y["mean"]), textcoords="offset points", xytext=(5, 3),
                        fontsize=8)
        ax.set_xlabel(x_label)
        ax.set_ylabel("refusal rate on held-out harmful prompts (%)")
        ax.grid(alpha=0.3)
    axes[0].set_title("refusals kept against task quality")
    axes[1].set_title("refusals kept against over-refusal")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def safety_tradeoff(sweep_dir: Path, out: Path) -> Path:
    """Write the page's files under ``out``; returns the Markdown table's path."""
    doc = collect(sweep_dir)
    write_atomic(out / "safety_tradeoff.json", json.dumps(doc, indent=2, allow_nan=False))
    (out / "plots").mkdir(parents=True, exist_ok=True)
    write_atomic(out / "plots" / "safety_tradeoff.png", plot(doc))
    path = out / "safety_tradeoff.md"
    write_atomic(path, "# Refusals kept, task quality and over-refusal\n\n" + markdown(doc)
                 + "\n![trade-off](plots/safety_tradeoff.png)\n")
    return path
