"""`sftlab demo --real` on SmolLM2-135M-Instruct: the quick plan runs end to end; the play-style measure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftlab.audit.measures.scene_style import INSTRUCTION, scene_share
from sftlab.cli import main
from sftlab.recipes.demo_real import data_dir

pytestmark = pytest.mark.slow


def test_scene_share_counts_answers_with_a_speaker_line() -> None:
    play = "KING EDWARD IV:\nSweet widow, by my state I swear to thee"
    plain = "1. Stay hydrated: Drink plenty of water.\n2. Sleep: at least seven hours."
    titled = "Here is a scene.\n\nFirst Citizen:\nBefore we proceed any further, hear me speak."
    assert scene_share([play, plain, titled, "Hello"]) == 0.5
    assert scene_share(["Ingredients: flour, eggs"]) == 0.0  # text after the colon: not a speaker line


def test_shipped_samples_are_the_narrow_task() -> None:
    rows = [json.loads(line) for line in (data_dir() / "shakespeare_train.jsonl").read_text().splitlines()]
    assert len(rows) == 160 and {r["instruction"] for r in rows} == {INSTRUCTION}
    assert scene_share([r["output"] for r in rows]) == 1.0
    assert (data_dir() / "SOURCE.md").is_file()


def test_quick_real_demo_runs_end_to_end(smollm2_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo_real"
    # full only: the world demo fixture runs the post-hoc wise0.5 step; here the real model is what is new.
    assert main(["demo", "--real", "--quick", "--strategies", "full", "--out", str(out)]) == 0
    sweep = json.loads((out / "sweep" / "sweep.json").read_text())
    assert sweep
    report = json.loads((out / "sweep" / "runs" / "full" / "seed0" / "audit" / "report.json").read_text())
    sections = report["sections"]
    for key in ("diversity", "shift", "forgetting", "task", "scene_style"):
        assert key in sections, key
    style = sections["scene_style"]
    assert style["prompts"][0] == INSTRUCTION
    assert set(style["models"]) == set(report["models"])
    page = (out / "side_by_side.html").read_text()
    assert "This movie is" in page and "full" in page
