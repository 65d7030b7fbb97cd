"""Report figures: what each panel of the diversity plot shows, read back from the matplotlib figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from sftlab.audit.report.plots import diversity_bars, diversity_figure


def _table() -> dict:
    """Self-BLEU's base is small (0.01), so +0.035 is +350% of it; distinct-1 moves by -0.02 of 0.9."""
    def delta(d: float) -> dict:
        return {"delta": d, "ci_low": d - 0.005, "ci_high": d + 0.005}

    return {
        "metrics": ["distinct_1", "self_bleu"],
        "higher_is_diverse": {"distinct_1": True, "self_bleu": False},
        "models": {"base": {"per_input": {"distinct_1": {"mean": 0.9}, "self_bleu": {"mean": 0.01}}},
                   "tuned": {"per_input": {"distinct_1": {"mean": 0.88}, "self_bleu": {"mean": 0.045}}}},
        "deltas": {"tuned": {"per_input": {"distinct_1": delta(-0.02), "self_bleu": delta(0.035)}}},
    }


def test_each_measure_gets_its_own_panel_in_its_own_units() -> None:
    fig = diversity_figure(_table(), "base", {"distinct_1": "distinct-1", "self_bleu": "Self-BLEU"})
    panels = {ax.get_title().split("  ")[0]: ax for ax in fig.axes if ax.get_visible()}
    assert panels.keys() == {"distinct-1", "Self-BLEU"}
    (bar,) = panels["distinct-1"].patches
    assert bar.get_width() == pytest.approx(-0.02)  # the change itself, not a share of the base
    # Self-BLEU's +350% does not set distinct-1's scale: each axis spans its own change, centred on 0.
    low, high = panels["distinct-1"].get_xlim()
    assert low == pytest.approx(-high) and 0.025 < high < 0.05
    # Right is more diverse in every panel: Self-BLEU, where higher is more repetitive, runs high to low,
    # so its rise (less diverse) is drawn to the left of 0.
    low, high = panels["Self-BLEU"].get_xlim()
    assert low > 0 > high
    (bar,) = panels["Self-BLEU"].patches
    assert bar.get_width() == pytest.approx(0.035)
    plt.close(fig)


def test_the_png_renders() -> None:
    assert diversity_bars(_table(), "base", {}).startswith(b"\x89PNG")
