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
