"""Sweep pieces that need no training: config checks, aggregation, the Pareto front, formatting."""

from __future__ import annotations

import json

import pytest
import yaml

from sftlab.errors import UserError
from sftlab.sweep import (
    COLUMNS,
    ROW_FILE,
    SETTINGS_FILE,
    aggregate,
    finished_row,
    format_cell,
    load_sweep,
    pareto_front,
    plan,
    run_settings,
)


def _sweep(tmp_path, **overrides):
    data = {
        "base_model": "base",
        "out": str(tmp_path / "sweep"),
        "train": {"train_file": "train.jsonl"},
        "strategies": [{"name": "full"}, {"name": "wise", "interpolate": {"source": "full", "alpha": 0.5}}],
        "audit": {"prompts": "prompts.jsonl"},
        **overrides,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_plan_runs_trained_strategies_before_interpolations(tmp_path):
    cfg = load_sweep(str(_sweep(tmp_path, strategies=[
        {"name": "wise", "interpolate": {"source": "full"}}, {"name": "full"}], seeds=[0, 1])))
    assert [(s.strategy.name, s.seed) for s in plan(cfg)] == [("full", 0), ("wise", 0), ("full", 1), ("wise", 1)]
    assert plan(cfg)[1].run_dir == tmp_path / "sweep" / "runs" / "wise" / "seed0"


def test_a_typo_in_a_strategy_is_caught_before_any_run(tmp_path):
    path = _sweep(tmp_path, strategies=[{"name": "full", "train": {"learning_rat": 0.1}}])
    with pytest.raises(UserError, match="did you mean 'learning_rate'"):
        load_sweep(str(path))


@pytest.mark.parametrize("strategies, message", [
    ([{"name": "a"}, {"name": "a"}], "unique"),
    ([{"name": "w", "interpolate": {"source": "missing"}}], "not a trained strategy"),
    ([{"name": "w", "interpolate": {"source": "w"}}], "not a trained strategy"),
])
def test_bad_strategy_lists_are_user_errors(tmp_path, strategies, message):
    with pytest.raises(UserError, match=message):
        load_sweep(str(_sweep(tmp_path, strategies=strategies)))


def test_pareto_front_by_hand():
    # (1,1) is beaten by (2,2); (3,0) and (0,3) and (2,2) trade off; (2,2) duplicates are both kept.
    points = [(1, 1), (2, 2), (3, 0), (0, 3), (2, 2)]
    assert pareto_front(points) == [1, 2, 3, 4]


def test_aggregate_mean_and_sample_std_over_seeds():
    rows = [{"strategy": "a", "seed": 0, "eval_loss": 1.0}, {"strategy": "a", "seed": 1, "eval_loss": 3.0},
            {"strategy": "b", "seed": 0, "eval_loss": 2.0}]
    table = aggregate(rows, ["a", "b"])
    a, b = table["strategies"]["a"]["columns"]["eval_loss"], table["strategies"]["b"]["columns"]["eval_loss"]
    assert a == {"mean": 2.0, "std": pytest.approx(2 ** 0.5)} and b == {"mean": 2.0, "std": None}
    assert table["strategies"]["b"]["columns"]["shifted"] == {"mean": None, "std": None}
    columns = {c.key: c for c in COLUMNS}
    assert format_cell(columns["shifted"], {"mean": 0.0412, "std": 0.005}) == "4.1% ± 0.5%"
    assert format_cell(columns["eval_loss"], {"mean": None, "std": None}) == "–"


def test_a_finished_run_is_skipped_only_when_its_settings_are_this_configs(tmp_path):
    cfg = load_sweep(str(_sweep(tmp_path)))
    full = plan(cfg)[0]
    assert finished_row(cfg, full) is None
    full.run_dir.mkdir(parents=True)
    (full.run_dir / SETTINGS_FILE).write_text(run_settings(cfg, full))
    (full.run_dir / ROW_FILE).write_text(json.dumps({"strategy": "full", "seed": 0}))
    assert finished_row(cfg, full)["strategy"] == "full"
    # The same run dir under a changed learning rate: its row no longer belongs to this sweep.
    changed = load_sweep(str(_sweep(tmp_path, train={"train_file": "train.jsonl", "learning_rate": 0.5})))
    with pytest.raises(UserError, match="other settings"):
        finished_row(changed, plan(changed)[0])
    # A WiSE-FT mix of a changed source is stale too.
    assert run_settings(changed, plan(changed)[1]) != run_settings(cfg, plan(cfg)[1])
    # The demo redoes such a run: its directory goes, and the run counts as not done.
    assert finished_row(changed, plan(changed)[0], redo_stale=True) is None and not full.run_dir.exists()


def test_a_base_retrained_in_place_makes_even_unfinished_runs_stale(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "model.safetensors").write_bytes(b"weights v1")
    cfg = load_sweep(str(_sweep(tmp_path, base_model=str(base))))
    full = plan(cfg)[0]
    full.run_dir.mkdir(parents=True)
    (full.run_dir / SETTINGS_FILE).write_text(run_settings(cfg, full))  # started, killed before its row
    assert finished_row(cfg, full) is None  # not finished: it will resume
    (base / "model.safetensors").write_bytes(b"weights v2, retrained")
    with pytest.raises(UserError, match="other settings"):
        finished_row(cfg, full)  # its checkpoints belong to the old base: no resume
