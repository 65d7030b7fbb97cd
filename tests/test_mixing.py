"""Replay: the share of trained tokens, fresh windows every epoch, reproducible from the seed."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from sftlab.config import TrainConfig
from sftlab.data.dataset import build_train_dataset
from sftlab.data.mixing import ReplayPool, replay_target_tokens
from sftlab.data.readers import read_records, read_texts
from sftlab.data.tokenize import IGNORE_INDEX


def test_replay_target_tokens() -> None:
    assert replay_target_tokens(800, 0.2) == 200  # 200 / (800 + 200) = 0.2
    assert replay_target_tokens(1000, 0.5) == 1000
    with pytest.raises(ValueError):
        replay_target_tokens(10, 1.0)


def test_pool_windows_hold_the_target_and_come_from_the_stream(tiny_tokenizer) -> None:
    pool = ReplayPool(["alpha beta gamma delta"] * 3 + ["one two three four five six seven"] * 5, tiny_tokenizer)
    windows = pool.sample(1000, 16, random.Random(0))
    assert sum(w.num_trained for w in windows) == 1000
    assert all(len(w.input_ids) <= 16 and w.is_replay and w.labels[0] == IGNORE_INDEX for w in windows)
    stream = pool.stream.tolist()
    for w in windows:
        n = len(w.input_ids)
        assert any(stream[s : s + n] == w.input_ids for s in range(len(stream) - n + 1))


def trained(rows: list[dict], replay: bool) -> int:
    return sum(
        1
        for r in rows
        for label, rep in zip(r["labels"], r["replay_mask"])
        if label != IGNORE_INDEX and bool(rep) == replay
    )


@pytest.mark.parametrize("packing", [False, True])
def test_replay_share_per_epoch_and_resampling(tiny_tokenizer, shared_data: Path, packing: bool) -> None:
    records = read_records([shared_data / "alpaca" / "alpaca_5000.json"]).records[:150]
    texts = read_texts(shared_data / "wikitext-2" / "valid.txt")[:150]
    cfg = TrainConfig(
        model_name_or_path="x",
        train_file=["x"],
        max_length=128,
        packing=packing,
        seed=3,
        replay={"corpus": "wikitext", "ratio": 0.25},
    )
    ds = build_train_dataset(records, tiny_tokenizer, cfg, replay_texts=texts)
    epochs = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        rows = [ds[i] for i in range(len(ds))]
        replay, sft = trained(rows, True), trained(rows, False)
        # counted from the rows themselves, not from the stats
        assert abs(replay / (replay + sft) - 0.25) <= 0.02 * 0.25
        assert ds.stats.replay_tokens == replay and ds.stats.trained_tokens == replay + sft
        epochs.append([r["input_ids"] for r in rows if any(r["replay_mask"])])
    assert epochs[0] != epochs[1]  # replay was resampled
    again = build_train_dataset(records, tiny_tokenizer, cfg, replay_texts=texts)
    again.set_epoch(1)
    assert [r["input_ids"] for r in again if any(r["replay_mask"])] == epochs[1]  # the seed reproduces it
