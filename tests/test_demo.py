"""``sftlab demo --quick`` end to end: the testbed shows collapse, and the sweep resumes.

The demo itself is the session fixture ``demo`` (tests/conftest.py), shared with the browser check of its pages.
"""

from __future__ import annotations

import json
from pathlib import Path

from sftlab.cli import main


def _world(report: Path) -> dict:
    return json.loads(report.read_text())["sections"]["world"]


def test_demo_writes_the_sweep_report(demo: Path) -> None:
    sweep = json.loads((demo / "sweep" / "sweep.json").read_text())
    assert set(sweep["strategies"]) == {"full", "wise0.5"}
    html = (demo / "sweep" / "sweep.html").read_text()
    assert "Strategies compared" in html and "data:image/png;base64," in html
    for row in sweep["rows"]:
        assert row["eval_loss"] is not None and row["trainable_params"] > 0
        assert row["forecast_kl"] > 0 and row["delta_heldout_task"] is not None  # the forecast and what it forecasts
        assert (demo / "sweep" / "runs" / row["strategy"] / f"seed{row['seed']}" / "audit" / "report.html").is_file()
    # Two strategies cannot rank anything: the forecast check says so rather than report rho = +-1 as a result.
    assert {m["key"] for m in sweep["forecast"]["measures"]} == {"delta_perplexity", "delta_benchmark",
                                                                  "delta_heldout_task"}
    assert all(m["n"] == 2 and m["verdict"].startswith("too few strategies") for m in sweep["forecast"]["measures"])
    assert "Did the forgetting forecast work on this sweep?" in html


def test_full_finetune_on_narrow_lowers_open_prompt_genre_entropy(demo: Path) -> None:
    world = _world(demo / "sweep" / "runs" / "full" / "seed0" / "audit" / "report.json")
    base, tuned = (world["models"][m]["open"] for m in world["models"])
    assert base["entropy"] is not None and tuned["entropy"] is not None
    assert tuned["entropy"] < base["entropy"], (base, tuned)
    # The narrow set is movie reviews: after tuning, they take over the open prompts.
    assert tuned["shares"]["movie_review"] > base["shares"]["movie_review"]


def test_rerun_skips_finished_runs(demo: Path) -> None:
    rows = sorted((demo / "sweep" / "runs").glob("*/seed0/row.json"))
    before = [p.stat().st_mtime_ns for p in rows]
    assert main(["--offline", "demo", "--quick", "--out", str(demo)]) == 0
    assert [p.stat().st_mtime_ns for p in rows] == before
