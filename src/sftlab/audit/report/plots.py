"""Report figures with matplotlib (Agg backend), returned as PNG bytes.

One colour per model, the same in every figure: grey for the base, then the tab10 cycle.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

BASE_COLOR = "#8a8f98"
CLASS_COLORS = {"unshifted": "#6bbf8a", "marginal": "#f2c14e", "shifted": "#e4572e"}
_TAB10 = plt.get_cmap("tab10").colors


def model_colors(models: Sequence[str], base: str) -> dict[str, Any]:
    """A stable colour per model."""
    tuned = [m for m in models if m != base]
    return {base: BASE_COLOR, **{m: _TAB10[i % 10] for i, m in enumerate(tuned)}}


def _style(ax: Any) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _nan_to_zero(x: float | None) -> float:
    return 0.0 if x is None or math.isnan(x) else x


def diversity_figure(table: dict[str, Any], base: str, labels: dict[str, str]) -> Any:
    """One panel per diversity measure: each tuned model's per-prompt change vs the base, in the measure's units.

    Each measure keeps its own axis, because their scales differ by orders of magnitude and a change as a
    share of the base's value explodes where the base is near 0 (Self-BLEU): on one shared axis its bar
    flattens all others. Every axis is centred on 0 and oriented so that right is *more diverse*: the axis
    of a measure where higher means more repetitive (Self-BLEU, compression ratio) runs from high to low,
    so its tick labels still read as true changes. Whiskers are the paired-bootstrap 95% interval.
    """
    names: list[str] = table["metrics"]
    tuned = [m for m in table["models"] if m != base]
    colors = model_colors(list(table["models"]), base)
    cols = 2 if len(names) > 1 else 1
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, layout="constrained",
                             figsize=(8, 0.6 + rows * (0.75 + 0.22 * max(len(tuned), 1))))
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        higher_is_diverse = table["higher_is_diverse"][name]
        ax.set_title(f"{labels.get(name, name)}  ({'↑' if higher_is_diverse else '↓'} is more diverse)", fontsize=8.5)
        reach = 0.0
        for j, model in enumerate(tuned):
            d = table["deltas"][model]["per_input"][name]
            if any(v is None or math.isnan(v) for v in (d["delta"], d["ci_low"], d["ci_high"])):
                ax.text(0, j, " undefined: see the table", va="center", fontsize=7.5, color="#666")
                continue
            lo, hi = sorted((d["ci_low"], d["ci_high"]))
            ax.barh(j, d["delta"], height=0.7, color=colors[model], label=model)
            ax.errorbar(d["delta"], j, xerr=[[max(d["delta"] - lo, 0.0)], [max(hi - d["delta"], 0.0)]],
                        fmt="none", ecolor="#222", capsize=2.5, linewidth=1)
            reach = max(reach, abs(lo), abs(hi), abs(d["delta"]))
        reach = reach * 1.15 or 1.0
        # A symmetric axis keeps 0 in the middle of every panel, so left and right mean the same everywhere.
        ax.set_xlim((-reach, reach) if higher_is_diverse else (reach, -reach))
        ax.axvline(0, color="#333", linewidth=0.8)
        ax.set_yticks(range(len(tuned)), tuned, fontsize=7.5)
        ax.set_ylim(len(tuned) - 0.5, -0.5)
        ax.tick_params(axis="x", labelsize=7.5)
        ax.grid(axis="x", color="#e6e6e6", linewidth=0.8)
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle("Diversity per prompt: change vs base in each measure's own units, with 95% bootstrap intervals\n"
                 "← less diverse · more diverse →", fontsize=9)
    return fig


def diversity_bars(table: dict[str, Any], base: str, labels: dict[str, str]) -> bytes:
    """:func:`diversity_figure` as PNG bytes."""
    return _png(diversity_figure(table, base, labels))


def shift_classes(summaries: dict[str, dict[str, Any]], reference: float) -> bytes:
    """One stacked horizontal bar per tuned model: share of unshifted / marginal / shifted positions."""
    models = list(summaries)
    fig, ax = plt.subplots(figsize=(8, 1.3 + 0.5 * len(models)), layout="constrained")
    for y, model in enumerate(models):
        left = 0.0
        for name, color in CLASS_COLORS.items():
            share = _nan_to_zero(summaries[model]["class_fraction"][name]) * 100
            ax.barh(y, share, left=left, color=color, height=0.6, label=name if y == 0 else None)
            if share >= 6:
                ax.text(left + share / 2, y, f"{share:.1f}%", ha="center", va="center", fontsize=8)
            left += share
    # The reference is a share of *shifted* positions, which fill the bar's right end.
    ax.axvline(100 - reference * 100, color="#333", linestyle="--", linewidth=1, label=f"Llama-2-7b-chat: {reference:.1%} shifted")
    ax.set_yticks(range(len(models)), models, fontsize=9)
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of answer positions", fontsize=9)
    ax.invert_yaxis()
    ax.legend(ncol=4, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def kl_by_position(summaries: dict[str, dict[str, Any]], colors: dict[str, Any]) -> bytes:
    """Mean KL(tuned || base) and shifted share at each answer position, one line per tuned model."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.2), layout="constrained")
    for model, s in summaries.items():
        pos = s["by_position"]
        ax1.plot(pos["position"], pos["mean_kl"], color=colors[model], label=model, linewidth=1.5)
        ax2.plot(pos["position"], [v * 100 for v in pos["shifted"]], color=colors[model], label=model, linewidth=1.5)
    ax1.set_title("KL(tuned ‖ base) by answer position", fontsize=10)
    ax1.set_xlabel("position in the answer (tokens)", fontsize=9)
    ax1.set_ylabel("mean KL (nats)", fontsize=9)
    ax2.set_title("shifted tokens by answer position", fontsize=10)
    ax2.set_xlabel("position in the answer (tokens)", fontsize=9)
    ax2.set_ylabel("% shifted", fontsize=9)
    for ax in (ax1, ax2):
        _style(ax)
        ax.tick_params(labelsize=8)
    ax2.legend(fontsize=8, frameon=False)
    return _png(fig)


def forgetting_bars(ppl: dict[str, dict[str, float]], mc: dict[str, dict[str, float]], base: str,
                    colors: dict[str, Any]) -> bytes:
    """Left: perplexity change of each tuned model vs the base per corpus (%). Right: MC accuracy per model."""
    panels = [p for p in (ppl, mc) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.4), squeeze=False, layout="constrained")
    axes_iter = iter(axes.flat)
    if ppl:
        ax = next(axes_iter)
        corpora = list(ppl)
        tuned = [m for m in next(iter(ppl.values())) if m != base]
        width = min(0.8 / max(len(tuned), 1), 0.3)
        for j, model in enumerate(tuned):
            change = [100 * (ppl[c][model] / ppl[c][base] - 1) for c in corpora]
            xs = [i + (j - (len(tuned) - 1) / 2) * width for i in range(len(corpora))]
            ax.bar(xs, change, width=width, color=colors[model], label=model)
        ax.axhline(0, color="#333", linewidth=0.8)
        ax.set_xticks(range(len(corpora)), corpora, rotation=15, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(corpora) - 0.4)
        ax.set_ylabel("perplexity change vs base (%)", fontsize=9)
        ax.set_title("Perplexity on reference text (higher = forgot more)", fontsize=10)
        ax.legend(fontsize=8, frameon=False)
        _style(ax)
    if mc:
        ax = next(axes_iter)
        benches = list(mc)
        models = list(next(iter(mc.values())))
        width = min(0.8 / len(models), 0.3)
        for j, model in enumerate(models):
            xs = [i + (j - (len(models) - 1) / 2) * width for i in range(len(benches))]
            ax.bar(xs, [100 * mc[b][model] for b in benches], width=width, color=colors[model], label=model)
        ax.set_xticks(range(len(benches)), benches, rotation=15, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(benches) - 0.4)
        ax.set_ylabel("accuracy (%)", fontsize=9)
        ax.set_ylim(0, 100)
        ax.set_title("Multiple-choice accuracy", fontsize=10)
        ax.legend(fontsize=8, frameon=False)
        _style(ax)
    return _png(fig)
