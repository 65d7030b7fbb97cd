"""The audit's score cache: a model's perplexity and choice scores on fixed inputs are computed once."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from sftlab.audit.forgetting import Perplexity
from sftlab.audit.score_cache import cached_scores


def _cached(tmp_path: Path, key: dict, calls: list[int], hits: list[int]) -> Perplexity:
    def compute() -> Perplexity:
        calls.append(1)
        return Perplexity(12.5, 5, [10.0, 2.5], [4, 1])

    return cached_scores(tmp_path, key, compute, asdict, lambda d: Perplexity(**d), lambda: hits.append(1))


def test_the_second_call_reads_the_first_ones_scores(tmp_path: Path) -> None:
    calls: list[int] = []
    hits: list[int] = []
    key = {"kind": "perplexity", "model": "abc", "texts": ["a b c"], "max_length": 64, "batch_size": 8}
    first = _cached(tmp_path, key, calls, hits)
    again = _cached(tmp_path, key, calls, hits)
    assert (len(calls), len(hits)) == (1, 1) and again == first and again.value == first.value
    # Another model, other inputs or another setting is another entry.
    for change in ({"model": "abd"}, {"texts": ["a b d"]}, {"max_length": 32}, {"batch_size": 4}):
        _cached(tmp_path, {**key, **change}, calls, hits)
    assert (len(calls), len(hits)) == (5, 1)


def test_an_unreadable_entry_is_recomputed_and_replaced(tmp_path: Path) -> None:
    calls: list[int] = []
    key = {"kind": "perplexity", "model": "abc"}
    _cached(tmp_path, key, calls, [])
    (entry,) = (tmp_path / "scores").iterdir()
    entry.write_text(json.dumps({"nll_sum": 1.0}))  # a missing field: not this version's layout
    assert _cached(tmp_path, key, calls, []).n_tokens == 5 and len(calls) == 2
    assert json.loads(entry.read_text())["n_tokens"] == 5
