"""Data quality: length stats, exact and near duplicates, train/eval overlap.

Definitions (each checked against a brute-force computation in tests/test_data_quality.py):

* Texts are compared after whitespace normalisation: runs of whitespace become one space, ends stripped.
* Exact duplicates: records whose whole text (prompt and response, or all turns) is identical.
  Duplicate prompts: records whose prompt (user side) is identical, whatever the answer.
* Near duplicates: pairs whose sets of 5-byte shingles (of the lower-cased normalised text in UTF-8,
  that is character 5-grams for ASCII text) have
  Jaccard similarity >= ``threshold`` (0.8). Candidates come from MinHash LSH (datasketch; Broder 1997,
  Leskovec et al., *Mining of Massive Datasets* ch. 3) and each is confirmed with the exact Jaccard, so
  no reported pair is a false positive; LSH may miss a few true pairs near the threshold. Exact
  duplicates are reported once, not again as near duplicates.
* Train/eval overlap compares prompts: an eval prompt seen in training inflates eval scores even when
  the answer differs. Exact and near (same Jaccard rule) are both counted.
"""

from __future__ import annotations

import statistics
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from datasketch import MinHash, MinHashLSH

from sftlab.data.records import Record

SHINGLE = 5
NUM_PERM = 128
NEAR_THRESHOLD = 0.8


def normalize(text: str) -> str:
    """Whitespace runs to one space, ends stripped."""
    return " ".join(text.split())


def record_text(record: Record) -> str:
    """The whole record as one text: the text, prompt + response, or every turn as ``role: content``."""
    if record.kind == "text":
        return record.text or ""
    return "\n".join(f"{m.role}: {m.content}" for m in record.as_messages())


def prompt_text(record: Record) -> str:
    """The user side: the text of a text record, the prompt, or the user turns of a chat."""
    if record.kind == "text":
        return record.text or ""
    return "\n".join(m.content for m in record.as_messages() if m.role != "assistant")


def response_text(record: Record) -> str:
    """The trained side: the completion, the assistant turns, or all of a text record."""
    if record.kind == "text":
        return record.text or ""
    return "\n".join(m.content for m in record.as_messages() if m.role == "assistant")


def exact_duplicates(texts: Sequence[str]) -> list[list[int]]:
    """Groups (two or more) of indices whose normalised texts are identical, in order of first index."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, text in enumerate(texts):
        groups[normalize(text)].append(i)
    return [g for g in groups.values() if len(g) > 1]


def shingles(text: str, k: int = SHINGLE) -> set[bytes]:
    """k-byte shingles of the lower-cased normalised text in UTF-8 (character k-grams for ASCII text);
    the whole text when it is shorter than k."""
    norm = normalize(text).lower().encode("utf-8", errors="replace")
    if len(norm) <= k:
        return {norm}
    return {norm[i : i + k] for i in range(len(norm) - k + 1)}


def jaccard(a: set[bytes], b: set[bytes]) -> float:
    """|a & b| / |a | b| (1.0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def _minhashes(sets: Sequence[set[bytes]], num_perm: int) -> list[MinHash]:
    # CRC-32 as the base hash: datasketch's default (SHA-1 through struct) costs ~4 us a shingle, most
    # of the run. MinHash needs distinct shingles to get distinct values, not a cryptographic hash; the
    # num_perm random affine permutations on top of it do the mixing.
    return MinHash.bulk([list(shingle_set) for shingle_set in sets], num_perm=num_perm, seed=1, hashfunc=zlib.crc32)


def near_duplicates(
    texts: Sequence[str],
    threshold: float = NEAR_THRESHOLD,
    num_perm: int = NUM_PERM,
) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, jaccard)``, i < j, of distinct normalised texts with shingle Jaccard >= threshold.

    Each group of exact duplicates takes part through its first member only.
    """
    first: dict[str, int] = {}
    for i, text in enumerate(texts):
        first.setdefault(normalize(text), i)
    ids = list(first.values())
    sets = [shingles(texts[i]) for i in ids]
    hashes = _minhashes(sets, num_perm)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for k, h in enumerate(hashes):
        lsh.insert(k, h)
    pairs = []
    for k, h in enumerate(hashes):
        for other in lsh.query(h):
            if other > k:
                score = jaccard(sets[k], sets[other])
                if score >= threshold:
                    pairs.append((ids[k], ids[other], score))
    return sorted(pairs)


def overlap(
    train: Sequence[str], eval_: Sequence[str], threshold: float = NEAR_THRESHOLD, num_perm: int = NUM_PERM
) -> tuple[list[tuple[int, int]], list[tuple[int, int, float]]]:
    """Eval items found in train: exact ``(eval i, train j)`` and near-only ``(eval i, train j, jaccard)``.

    Each eval item is listed once, with its first exact match or its most similar near match.
    """
    train_index: dict[str, int] = {}
    for j, text in enumerate(train):
        train_index.setdefault(normalize(text), j)
    exact = [(i, train_index[normalize(t)]) for i, t in enumerate(eval_) if normalize(t) in train_index]
    matched = {i for i, _ in exact}
    rest = [i for i in range(len(eval_)) if i not in matched]
    train_ids = list(train_index.values())
    train_sets = [shingles(train[j]) for j in train_ids]
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for k, h in enumerate(_minhashes(train_sets, num_perm)):
        lsh.insert(k, h)
    eval_sets = [shingles(eval_[i]) for i in rest]
    near = []
    for i, s, h in zip(rest, eval_sets, _minhashes(eval_sets, num_perm)):
        scored = [(jaccard(s, train_sets[k]), train_ids[k]) for k in lsh.query(h)]
        scored = [x for x in scored if x[0] >= threshold]
        if scored:
            score, j = max(scored)
            near.append((i, j, score))
    return exact, near


def length_summary(values: Sequence[int]) -> dict[str, float]:
    """count, min, mean, median, p95 (nearest rank) and max."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, max(0, -(-95 * len(ordered) // 100) - 1))]
    return {
        "count": len(ordered),
        "min": ordered[0],
        "mean": round(statistics.fmean(ordered), 2),
        "median": statistics.median(ordered),
        "p95": p95,
        "max": ordered[-1],
    }


def lengths(records: Sequence[Record], measure: Callable[[Sequence[Record]], list[tuple[int, int]]]) -> dict[str, Any]:
    """Prompt / response / total length summaries, and counts over common context sizes."""
    pairs = measure(records)
    prompt = [p for p, _ in pairs]
    response = [r for _, r in pairs]
    total = [p + r for p, r in pairs]
    return {
        "prompt": length_summary(prompt),
        "response": length_summary(response),
        "total": length_summary(total),
        "over": {str(n): sum(1 for t in total if t > n) for n in (512, 1024, 2048)},
    }


def word_lengths(records: Sequence[Record]) -> list[tuple[int, int]]:
    """(prompt, response) lengths in whitespace-separated words."""
    return [(0 if r.kind == "text" else len(prompt_text(r).split()), len(response_text(r).split())) for r in records]


def token_lengths(tokenizer: Any) -> Callable[[Sequence[Record]], list[tuple[int, int]]]:
    """(untrained, trained) token counts of each record as training formats it (template, EOS, BOS)."""
    from sftlab.data.tokenize import Encoder

    def measure(records: Sequence[Record]) -> list[tuple[int, int]]:
        encoder = Encoder(tokenizer)
        out = []
        for _, trained in encoder.ids([encoder.segments(r) for r in records], [encoder.lead(r) for r in records]):
            n = sum(trained)
            out.append((len(trained) - n, n))
        return out

    return measure


def _where(records: Sequence[Record], indices: Sequence[int]) -> list[str]:
    return [str(records[i].origin) for i in indices]


def build_report(
    records: Sequence[Record],
    measure: Callable[[Sequence[Record]], list[tuple[int, int]]] | None = None,
    eval_records: Sequence[Record] | None = None,
    examples: int = 10,
    step: Callable[[str], None] = lambda name: None,
) -> dict[str, Any]:
    """The quality part of a data report (counts, lengths, duplicates, overlap) as a JSON-ready dict.

    ``measure`` gives (prompt, response) lengths; None means whitespace words. ``step`` is told each
    stage's name as it starts (for a progress display). Up to ``examples`` cases of each finding are
    listed by origin.
    """
    step("lengths")
    unit = "whitespace words" if measure is None else "tokens"
    report: dict[str, Any] = {
        "records": len(records),
        "by_kind": dict(sorted(Counter(r.kind for r in records).items())),
        "by_format": dict(sorted(Counter(r.format for r in records).items())),
        "length_unit": unit,
        "lengths": lengths(records, measure or word_lengths),
    }
    step("exact duplicates")
    texts = [record_text(r) for r in records]
    dups = exact_duplicates(texts)
    prompt_dups = exact_duplicates([prompt_text(r) for r in records])
    report["exact_duplicates"] = {
        "groups": len(dups),
        "extra_copies": sum(len(g) - 1 for g in dups),
        "examples": [_where(records, g) for g in dups[:examples]],
    }
    report["duplicate_prompts"] = {
        "groups": len(prompt_dups),
        "extra_copies": sum(len(g) - 1 for g in prompt_dups),
        "examples": [_where(records, g) for g in prompt_dups[:examples]],
    }
    step("near duplicates")
    near = near_duplicates(texts)
    report["near_duplicates"] = {
        "threshold": NEAR_THRESHOLD,
        "shingle": f"{SHINGLE}-byte shingles",
        "pairs": len(near),
        "records": len({i for pair in near for i in pair[:2]}),
        "examples": [[*_where(records, [i, j]), round(score, 3)] for i, j, score in near[:examples]],
    }
    if eval_records is not None:
        step("train/eval overlap")
        exact, near_eval = overlap([prompt_text(r) for r in records], [prompt_text(r) for r in eval_records])
        report["eval_overlap"] = {
            "eval_records": len(eval_records),
            "compared": "prompts",
            "exact": len(exact),
            "near": len(near_eval),
            "exact_examples": [[str(eval_records[i].origin), str(records[j].origin)] for i, j in exact[:examples]],
            "near_examples": [
                [str(eval_records[i].origin), str(records[j].origin), round(s, 3)] for i, j, s in near_eval[:examples]
            ],
        }
    return report
