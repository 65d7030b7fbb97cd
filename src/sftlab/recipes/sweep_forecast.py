"""Did the forgetting forecast work on this sweep? Its rank correlation with the forgetting each strategy showed.

Each run's audit reads a forecast from the SFT prompts alone: the mean per-token KL(base ‖ tuned) along
the tuned model's answers (:mod:`sftlab.audit.forecast`, after Shenfeld et al. 2025, "RL's Razor"). The
same audit also measures forgetting: Δ perplexity on reference text, Δ multiple-choice accuracy and, on
the synthetic world, Δ adherence on the genres the SFT set did not teach (the held-out tasks). Across the
sweep's strategies (each one's mean over seeds), Spearman's rho between the forecast and each measure
says how well the forecast ranked the strategies by what they went on to forget.

A working forecast has rho > 0 against Δ perplexity (more KL, perplexity rises more) and rho < 0 against
the accuracy and task deltas (more KL, they fall more). The report turns rho into a plain sentence, with
the strategy count n and a permutation p-value, since with a handful of strategies even a large rho
can come from chance.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from sftlab.audit.report.section import Section, Table

FORECAST_KEY = "forecast_kl"
REVERSE_KEY = "forecast_kl_reverse"  # KL(tuned ‖ base): shown beside the headline, not judged
FORECAST_LABEL = "KL(base ‖ tuned) on the SFT prompts"
# |rho| thresholds of the verdict, in the direction that means the forecast ranked forgetting right.
WELL, ROUGHLY = 0.7, 0.3
MIN_STRATEGIES = 3  # two points always rank perfectly or backwards: a rho needs at least three


@dataclass(frozen=True)
class ForgettingMeasure:
    """A measured forgetting column of the sweep table and which way forgetting moves it."""

    key: str
    label: str
    sign: int  # +1: forgetting raises it (perplexity); -1: forgetting lowers it (accuracy, task score)


MEASURES: tuple[ForgettingMeasure, ...] = (
    ForgettingMeasure("delta_perplexity", "Δ perplexity (reference text)", +1),
    ForgettingMeasure("delta_benchmark", "Δ benchmark accuracy", -1),
    ForgettingMeasure("delta_heldout_task", "Δ held-out task score", -1),
)


def _pearson(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    xc = x - x.mean(axis=axis, keepdims=True)
    yc = y - y.mean(axis=axis, keepdims=True)
    return (xc * yc).sum(axis) / np.sqrt((xc**2).sum(axis) * (yc**2).sum(axis))


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman's rank correlation and its two-sided permutation p-value.

    rho is ``scipy.stats.spearmanr`` (Pearson's r of the ranks, ties given their average rank, Spearman
    1904). The p-value permutes the pairing of the ranks: exactly, over all n! orders, for n <= 8, else
    over 9,999 seeded random ones; scipy's own p-value is a t approximation, poor for a few strategies.
    Returns (nan, nan) when n < 2 or a side is constant (rho is undefined).
    """
    x_arr, y_arr = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x_arr) != len(y_arr):
        raise ValueError(f"x and y differ in length: {len(x_arr)} vs {len(y_arr)}")
    n = len(x_arr)
    if n < 2 or np.ptp(x_arr) == 0 or np.ptp(y_arr) == 0:
        return float("nan"), float("nan")
    rho = float(stats.spearmanr(x_arr, y_arr).statistic)
    rx, ry = stats.rankdata(x_arr), stats.rankdata(y_arr)
    test = stats.permutation_test((rx,), lambda a, axis=-1: _pearson(a, ry, axis), permutation_type="pairings",
                                  vectorized=True, n_resamples=math.factorial(n) if n <= 8 else 9999, rng=0)
    return rho, float(min(1.0, test.pvalue))


def verdict(agreement: float, p_value: float, n: int) -> str:
    """A plain sentence on how the forecast did, from rho signed so that > 0 means it ranked forgetting right."""
    if n < MIN_STRATEGIES:
        return f"too few strategies to judge (n = {n}; a rank correlation needs at least {MIN_STRATEGIES})"
    if math.isnan(agreement):
        return "ρ is undefined: the measure (or the forecast) is the same for every strategy"
    if agreement >= WELL:
        text = "the forecast ranked forgetting well"
    elif agreement >= ROUGHLY:
        text = "the forecast ranked forgetting only roughly"
    elif agreement > -ROUGHLY:
        text = "the forecast did not rank forgetting"
    else:
        text = "the forecast ranked forgetting backwards"
    if not math.isnan(p_value) and p_value > 0.05:
        text += f", though with n = {n} this is within chance (p > 0.05)"
    return text


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def strategy_means(table: dict[str, Any], key: str) -> dict[str, float]:
    """Each strategy's mean of ``key`` over its seeds' rows (strategies with no value left out)."""
    means = {}
    for name in table["strategies"]:
        values = [r[key] for r in table["rows"] if r["strategy"] == name and _number(r.get(key))]
        if values:
            means[name] = float(np.mean(values))
    return means


def forecast_correlations(table: dict[str, Any]) -> dict[str, Any]:
    """Per forgetting measure: rho, p, n and the verdict, across strategies (each one's mean over seeds).

    ``table`` is :func:`sftlab.recipes.sweep.aggregate`'s output (its ``rows`` are read); a strategy missing the
    forecast or the measure is left out of that measure's n. ``rho_reverse`` is the same rank correlation
    for KL(tuned ‖ base), for comparison with the headline direction.
    """
    forecast, reverse = strategy_means(table, FORECAST_KEY), strategy_means(table, REVERSE_KEY)
    measures = []
    for m in MEASURES:
        measured = strategy_means(table, m.key)
        names = [n for n in table["strategies"] if n in forecast and n in measured]
        if not names:
            continue
        rho, p = spearman([forecast[n] for n in names], [measured[n] for n in names])
        with_reverse = [n for n in names if n in reverse]
        rho_reverse = (spearman([reverse[n] for n in with_reverse], [measured[n] for n in with_reverse])[0]
                       if len(with_reverse) == len(names) else float("nan"))
        agreement = m.sign * rho
        measures.append({"key": m.key, "label": m.label, "n": len(names), "strategies": names, "rho": rho,
                         "p_value": p, "expected_sign": m.sign, "agreement": agreement,
                         "verdict": verdict(agreement, p, len(names)), "rho_reverse": rho_reverse})
    return {"forecast": FORECAST_KEY, "forecast_label": FORECAST_LABEL, "measures": measures}


def summary_line(m: dict[str, Any]) -> str:
    """``Δ perplexity: rho = +0.83 over n = 8 strategies (p = 0.01): the forecast ranked forgetting well``."""
    if math.isnan(m["rho"]):
        return f"{m['label']}, n = {m['n']} strategies: {m['verdict']}"
    p = "" if math.isnan(m["p_value"]) else f", p = {m['p_value']:.2f}"
    reverse = "" if math.isnan(m["rho_reverse"]) else f" (reverse KL: ρ = {m['rho_reverse']:+.2f})"
    return f"{m['label']}: ρ = {m['rho']:+.2f} over n = {m['n']} strategies{p}: {m['verdict']}{reverse}"


def forecast_section(table: dict[str, Any]) -> Section | None:
    """The sweep report's forecast check, or None when no run has a forecast (no ``sft_data`` in the audit)."""
    data = forecast_correlations(table)
    if not data["measures"]:
        return None
    expect = {+1: "ρ > 0", -1: "ρ < 0"}
    rows = [[m["label"], str(m["n"]), "–" if math.isnan(m["rho"]) else f"{m['rho']:+.2f}",
             "–" if math.isnan(m["p_value"]) else f"{m['p_value']:.2f}", expect[m["expected_sign"]], m["verdict"],
             "–" if math.isnan(m["rho_reverse"]) else f"{m['rho_reverse']:+.2f}"]
            for m in data["measures"]]
    t = Table(["measured forgetting", "n strategies", "Spearman ρ", "permutation p", "forecast works if", "verdict",
               "ρ of KL(tuned ‖ base)"], rows)
    intro = (f"The forecast is each strategy's {FORECAST_LABEL}, read before any benchmark (RL's Razor, Shenfeld et al. "
             "2025); the columns are the forgetting its audit then measured. Spearman's ρ across strategies (means over "
             "seeds) says how well the forecast ranked them: more KL should mean perplexity rises more (ρ > 0) and "
             "accuracy and held-out task scores fall more (ρ < 0). p is a two-sided permutation p-value (exact for up "
             "to 8 strategies). The reverse direction's ρ is beside it, for comparison; the verdict is the forward KL's.")
    lines = [summary_line(m) for m in data["measures"]]
    body = (f"<p>{html.escape(intro)}</p><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"
            + t.to_html())
    md = intro + "\n\n" + "\n".join(f"- {line}" for line in lines) + "\n\n" + t.to_markdown()
    return Section("forecast", "Did the forgetting forecast work on this sweep?", data, body, md)
