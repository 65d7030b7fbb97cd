"""Scores of one model on fixed inputs (perplexity, multiple-choice log-likelihoods), cached on disk.

Every audit of a sweep scores the same base on the same reference corpora and benchmarks. With the scores
cached beside the samples (the audit's ``cache_dir``), all audits but the first read the base's back. The
key hashes the model's fingerprint (its files, and the precision the audit runs in), the kind of score,
the inputs, and every setting that changes the numbers: ``max_length`` (the perplexity windows) and the
batch size (padding changes the order of the reductions, so the last digits).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sftlab.models.generate import write_json_atomic

T = TypeVar("T")
SCORE_CACHE_VERSION = 1


def cached_scores(cache_dir: Path, key: dict[str, Any], compute: Callable[[], T], encode: Callable[[T], Any],
                  decode: Callable[[Any], T], on_cached: Callable[[], None] | None = None) -> T:
    """``compute()``, or its result read back from ``cache_dir`` when the same ``key`` was scored before.

    ``encode`` turns the result into JSON-able data and ``decode`` back. ``on_cached`` runs when the cache
    answers (a progress bar jumps to its end).
    """
    blob = json.dumps({"v": SCORE_CACHE_VERSION, **key}, sort_keys=True, default=str)
    path = cache_dir / "scores" / f"{hashlib.sha256(blob.encode()).hexdigest()[:24]}.json"
    if path.is_file():
        try:
            value = decode(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError):
            value = None  # an unreadable entry (another version's layout) is recomputed and replaced
        if value is not None:
            if on_cached is not None:
                on_cached()
            return value
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, encode(value))
    return value
