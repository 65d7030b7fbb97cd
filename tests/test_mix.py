"""Mixing train_file entries at stated ratios: the counts, the seed, the config, and a run's record counts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sftlab.config import TrainConfig, load_config
from sftlab.data.mix import interleave_order, mix_records
from sftlab.data.readers import read_records
from sftlab.errors import UserError


def within_binomial_noise(k: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(k / n - p) <= sigmas * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interleave_under_counts_follow_the_weights(seed: int) -> None:
    order = interleave_order([3000, 3000], [0.97, 0.03], "interleave_under", seed)
    small = sum(1 for s, _ in order if s == 1)
    # stops when the big set runs out: every big record once, none twice, and the small share near 3%
    assert sum(1 for s, _ in order if s == 0) == 3000
    assert within_binomial_noise(small, len(order), 0.03)
    assert len(set(order)) == len(order)


def test_interleave_over_repeats_the_small_set_at_its_weight() -> None:
    order = interleave_order([40, 2000], [0.5, 0.5], "interleave_over", seed=0)
    small = [i for s, i in order if s == 0]
    assert within_binomial_noise(len(small), len(order), 0.5)
    assert set(small) == set(range(40)) and len(small) > 40  # every small record, many times over
    assert {i for s, i in order if s == 1} == set(range(2000))


def test_the_same_seed_gives_the_same_mix() -> None:
    args = ([500, 500, 500], [0.6, 0.3, 0.1], "interleave_under")
    assert interleave_order(*args, seed=7) == interleave_order(*args, seed=7)
    assert interleave_order(*args, seed=7) != interleave_order(*args, seed=8)


def write_set(path: Path, n: int, tag: str) -> str:
    path.write_text("".join(json.dumps({"instruction": f"{tag} {i}", "output": f"answer {i}"}) + "\n"
                            for i in range(n)))
    return str(path)


def test_mix_records_counts_each_file(tmp_path: Path) -> None:
    a, b = write_set(tmp_path / "a.jsonl", 400, "task"), write_set(tmp_path / "b.jsonl", 100, "safety")
    records = read_records([a, b]).records
    mixed, counts = mix_records(records, [a, b], [0.9, 0.1], "interleave_under", seed=0)
    assert counts[a] == 400 and counts[a] + counts[b] == len(mixed)
    assert within_binomial_noise(counts[b], len(mixed), 0.1)
    assert all(r.as_messages()[0].content.startswith("safety") for r in mixed if r.origin.file == b)
    same, plain = mix_records(records, [a, b], None, "concat", seed=0)
    assert same == records and plain == {a: 400, b: 100}


def config(tmp_path: Path, **extra) -> dict:
    return {"model_name_or_path": "m", "train_file": [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")], **extra}


def test_weighted_entries_mean_the_mix_section(tmp_path: Path) -> None:
    one = TrainConfig(**config(tmp_path, train_file=[{"path": "a.jsonl", "weight": 3}, {"path": "b.jsonl", "weight": 1}]))
    two = TrainConfig(**config(tmp_path, train_file=["a.jsonl", "b.jsonl"], mix={"weights": [3, 1]}))
    assert one.train_file == two.train_file == ["a.jsonl", "b.jsonl"] and one.mix == two.mix
    assert one.mix.strategy == "interleave_under"
    assert TrainConfig(**config(tmp_path)).mix is None  # a list without weights means what it always meant


@pytest.mark.parametrize("mix, message", [
    ({"weights": [0, 0]}, "sum to a positive number"),
    ({"weights": [1, -1]}, "non-negative"),
    ({"weights": [1]}, "1 weights for 2"),
    ({"weights": [1, 1], "strategy": "concat"}, "no weights"),
    ({"strategy": "interleave_over"}, "needs mix.weights"),
])
def test_bad_weights_are_user_errors(tmp_path: Path, mix: dict, message: str) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(json.dumps(config(tmp_path, mix=mix)))
    with pytest.raises(UserError, match=message):
        load_config(TrainConfig, path)


def test_a_run_reports_the_records_of_each_set(tiny_model_dir: Path, tmp_path: Path) -> None:
    from sftlab.recipes.train import run_train

    a, b = write_set(tmp_path / "a.jsonl", 60, "task"), write_set(tmp_path / "b.jsonl", 60, "safety")
    run = tmp_path / "run"
    run_train(TrainConfig(model_name_or_path=str(tiny_model_dir), output_dir=str(run), max_length=96, max_steps=1,
                          per_device_train_batch_size=4, save_strategy="no", train_file=[a, b],
                          mix={"weights": [0.75, 0.25], "strategy": "interleave_under"}, seed=3))
    stats = json.loads((run / "data" / "stats.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    counts = stats["records_per_file"]
    assert counts == summary["records_per_file"]
    assert counts[a] == 60 and 0 < counts[b] < 60  # the heavier set ran out first and stopped the draws
    assert stats["records"]["train"] == counts[a] + counts[b]
