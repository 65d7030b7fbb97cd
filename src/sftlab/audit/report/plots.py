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


def diversity_bars(table: dict[str, Any], base: str, labels: dict[str, str]) -> bytes:
    """Per-input change of every diversity metric for each tuned model, as % of the base's mean.

    Signs are oriented so that right is always *more diverse* (Self-BLEU and compression ratio are
    negated, since for them higher means more repetitive). Whiskers are the paired-bootstrap 95%
    interval of the delta, on the same scale.
    """
    names: list[str] = table["metrics"]
    tuned = [m for m in table["models"] if m != base]
    colors = model_colors(list(table["models"]), base)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.42 * len(names) * max(1, len(tuned)) ** 0.5), layout="constrained")
    height = 0.8 / max(len(tuned), 1)
    skipped: set[int] = set()
    for j, model in enumerate(tuned):
        ys, xs, lows, highs = [], [], [], []
        for i, name in enumerate(names):
            ref = abs(table["models"][base]["per_input"][name]["mean"])
            d = table["deltas"][model]["per_input"][name]
            sign = 1.0 if table["higher_is_diverse"][name] else -1.0
            if not ref or any(v is None or math.isnan(v) for v in (d["delta"], d["ci_low"], d["ci_high"])):
                skipped.add(i)
                continue
            x = sign * 100 * d["delta"] / ref
            lo, hi = sorted((sign * 100 * d["ci_low"] / ref, sign * 100 * d["ci_high"] / ref))
            ys.append(i + (j - (len(tuned) - 1) / 2) * height)
            xs.append(x)
            lows.append(max(x - lo, 0.0))
            highs.append(max(hi - x, 0.0))
        ax.barh(ys, xs, height=height * 0.9, color=colors[model], label=model)
        ax.errorbar(xs, ys, xerr=[lows, highs], fmt="none", ecolor="#222", capsize=2.5, linewidth=1)
    ax.axvline(0, color="#333", linewidth=0.8)
    for i in sorted(skipped):  # a base mean of 0 (or an undefined delta) has no relative change
        ax.text(0, i, "  no relative change (base is 0 or undefined): see the table", va="center", fontsize=7.5,
                color="#666")
    ax.set_yticks(range(len(names)), [labels.get(n, n) for n in names], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("change vs base, % of the base's value   (← less diverse · more diverse →)", fontsize=9)
    ax.set_title("Diversity per prompt: tuned vs base, with 95% bootstrap intervals", fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, frameon=False, loc="best")
    return _png(fig)


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
