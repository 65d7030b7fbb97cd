"""Mixing record sets at stated ratios: several ``train_file`` entries, each with a weight.

The convention is LLaMA-Factory's (``mix_strategy`` + ``interleave_probs``), which is Hugging Face
``datasets.interleave_datasets`` underneath, and we call that function too:

* ``concat`` (what a ``train_file`` list without weights means, unchanged): every record of every set, once.
* ``interleave_under``: draw the set of each next record with probability ``w_i / sum(w)`` (in order within
  a set) and stop when one set runs out (``stopping_strategy="first_exhausted"``): no record repeats, and
  the larger sets are undersampled.
* ``interleave_over``: the same draws, going on until every set has been used up at least once
  (``"all_exhausted"``); a set that runs out starts again, so the smaller sets are oversampled.

Either interleave makes set i's share of the mixed records ``w_i / sum(w)`` up to binomial noise, and the
same records in the same order for the same seed. Config, two spellings (they mean the same)::

    train_file: [alpaca.jsonl, refusals.jsonl]
    mix: {weights: [0.97, 0.03], strategy: interleave_under}

    train_file: [{path: alpaca.jsonl, weight: 0.97}, {path: refusals.jsonl, weight: 0.03}]

The mix is drawn once per run from the records left for training (after the eval split), and the run's
``data/stats.json`` and ``summary.json`` say how many records of each set were trained.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, interleave_datasets

from sftlab.data.records import Record
from sftlab.errors import UserError

STRATEGIES = ("concat", "interleave_under", "interleave_over")
_STOPPING = {"interleave_under": "first_exhausted", "interleave_over": "all_exhausted"}


def weighted_entries_to_mix(data: dict[str, Any]) -> dict[str, Any]:
    """A config dict whose ``train_file`` lists ``{path, weight}`` entries -> plain paths plus ``mix.weights``
    (strategy ``interleave_under`` unless ``mix.strategy`` says otherwise). Other dicts are returned as they are."""
    entries = data.get("train_file")
    if not isinstance(entries, list) or not any(isinstance(e, dict) for e in entries):
        return data
    if not all(isinstance(e, dict) and set(e) == {"path", "weight"} for e in entries):
        raise ValueError("train_file: either every entry is a path or every entry is {path: ..., weight: ...}")
    mix = dict(data.get("mix") or {})
    if "weights" in mix:
        raise ValueError("give the weights once: in the train_file entries or in mix.weights, not both")
    mix.setdefault("strategy", "interleave_under")
    return {**data, "train_file": [e["path"] for e in entries], "mix": {**mix, "weights": [e["weight"] for e in entries]}}


def check_weights(weights: Sequence[float] | None, strategy: str, n_sets: int) -> None:
    """Weights fit the sets and the strategy: one finite non-negative weight per set, summing to a positive
    number, and given exactly when the strategy interleaves. ValueError (a config error) otherwise."""
    if strategy not in STRATEGIES:
        raise ValueError(f"mix.strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if strategy == "concat":
        if weights is not None:
            raise ValueError("mix.strategy concat takes every record once and no weights: use interleave_under "
                             "or interleave_over to mix at the weights' ratios")
        return
    if weights is None:
        raise ValueError(f"mix.strategy {strategy} needs mix.weights, one per train_file entry")
    if len(weights) != n_sets:
        raise ValueError(f"mix.weights has {len(weights)} weights for {n_sets} train_file entries")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"mix.weights must be finite and non-negative, got {list(weights)}")
    if sum(weights) <= 0:
        raise ValueError(f"mix.weights must sum to a positive number, got {list(weights)} (sum {sum(weights)})")


def set_of(record: Record, paths: Sequence[str]) -> int:
    """Which ``train_file`` entry a record was read from (its origin is the file, or a file under the dir)."""
    file = record.origin.file
    for i, path in enumerate(paths):
        root = str(Path(path))
        if file == root or file.startswith(root.rstrip("/") + "/"):
            return i
    raise ValueError(f"record from {file} belongs to none of {list(paths)}")


def interleave_order(sizes: Sequence[int], weights: Sequence[float], strategy: str, seed: int) -> list[tuple[int, int]]:
    """(set, index within the set) of each mixed record, in order, from ``datasets.interleave_datasets``.

    Sets with weight 0 or no records take no part (interleave_over would otherwise never finish them)."""
    active = [i for i, (n, w) in enumerate(zip(sizes, weights)) if n > 0 and w > 0]
    if not active:
        raise UserError("the mix has no set with both records and a positive weight")
    total = sum(weights[i] for i in active)
    parts = [Dataset.from_dict({"set": [i] * sizes[i], "index": list(range(sizes[i]))}) for i in active]
    mixed = interleave_datasets(parts, probabilities=[weights[i] / total for i in active], seed=seed,
                                stopping_strategy=_STOPPING[strategy])
    return list(zip(mixed["set"], mixed["index"]))


def mix_records(
    records: Sequence[Record], paths: Sequence[str], weights: Sequence[float] | None, strategy: str, seed: int
) -> tuple[list[Record], dict[str, int]]:
    """The records to train on and how many came from each ``train_file`` entry (repeats counted).

    ``concat`` keeps ``records`` as they are; an interleave strategy draws from the sets at the weights'
    ratios (:func:`interleave_order`), reproducibly for ``seed``."""
    by_set: list[list[Record]] = [[] for _ in paths]
    for record in records:
        by_set[set_of(record, paths)].append(record)
    if strategy == "concat":
        mixed = list(records)
    else:
        check_weights(weights, strategy, len(paths))
        assert weights is not None
        mixed = [by_set[s][i] for s, i in interleave_order([len(b) for b in by_set], weights, strategy, seed)]
    counts = Counter(set_of(r, paths) for r in mixed)
    return mixed, {path: counts.get(i, 0) for i, path in enumerate(paths)}
