"""Statistics shared by the audit's comparisons: paired bootstrap intervals over items (prompts, questions)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def paired_bootstrap_ci(
    base: Sequence[float], tuned: Sequence[float], n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """mean(tuned) - mean(base) and its percentile 95% interval, resampling items in pairs (Efron 1979).

    Item i of ``base`` and of ``tuned`` belong together (the same prompt or question), so each bootstrap
    replicate draws item indices with replacement and takes the mean difference over them. NaN items
    (a metric undefined for that item) are dropped from both sides. Returns (delta, low, high), all NaN
    when no item is left.
    """
    b = np.asarray(base, dtype=float)
    t = np.asarray(tuned, dtype=float)
    if b.shape != t.shape:
        raise ValueError(f"paired samples differ in length: {len(b)} vs {len(t)}")
    keep = ~(np.isnan(b) | np.isnan(t))
    diff = (t - b)[keep]
    if len(diff) == 0:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    replicates = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    low, high = np.percentile(replicates, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


def bootstrap_ratio_ci(
    numerators: Sequence[float], denominators: Sequence[float], n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """sum(numerators) / sum(denominators) and its percentile 95% interval, resampling items (Efron 1979).

    For a per-token mean pooled over items (prompts): item i contributes ``numerators[i]`` (e.g. its summed
    KL) over ``denominators[i]`` (its token count). Each replicate draws items with replacement and takes
    the ratio of their sums, so the interval respects that tokens of one item are not independent. Items
    with a zero or NaN denominator, or a NaN numerator, are dropped. Returns (ratio, low, high), all NaN
    when no item is left.
    """
    num = np.asarray(numerators, dtype=float)
    den = np.asarray(denominators, dtype=float)
    if num.shape != den.shape:
        raise ValueError(f"numerators and denominators differ in length: {len(num)} vs {len(den)}")
    keep = ~(np.isnan(num) | np.isnan(den)) & (den != 0)
    num, den = num[keep], den[keep]
    if len(num) == 0:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num), size=(n_boot, len(num)))
    replicates = num[idx].sum(axis=1) / den[idx].sum(axis=1)
    low, high = np.percentile(replicates, [2.5, 97.5])
    return float(num.sum() / den.sum()), float(low), float(high)
