"""Quality checks against brute force, and `sftlab data check` on the shared Alpaca and OpenAssistant data."""

from __future__ import annotations

import json
import random
import shutil
from itertools import combinations
from pathlib import Path

import pytest

from sftlab.cli import main
from sftlab.data.quality import (
    exact_duplicates,
    jaccard,
    length_summary,
    near_duplicates,
    normalize,
    overlap,
    shingles,
)


@pytest.fixture(scope="module")
def alpaca(shared_data: Path) -> list[dict]:
    return json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())


def texts_of(rows: list[dict]) -> list[str]:
    return [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in rows]


def edit(text: str, rng: random.Random, n: int = 2) -> str:
    chars = list(text)
    for _ in range(n):
        chars[rng.randrange(len(chars))] = "#"
    return "".join(chars)


def test_exact_duplicates_match_a_set(alpaca: list[dict]) -> None:
    texts = texts_of(alpaca[:500])
    texts += [texts[3], texts[3] + "  ", texts[10].replace(" ", "\n")]  # whitespace differences count as equal
    groups = exact_duplicates(texts)
    brute: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        brute.setdefault(" ".join(t.split()), []).append(i)
    assert groups == [g for g in brute.values() if len(g) > 1]
    assert groups == [[3, 500, 501], [10, 502]]


def test_near_duplicates_match_brute_force(alpaca: list[dict]) -> None:
    rng = random.Random(0)
    texts = [t for t in texts_of(alpaca[:300]) if len(t) > 150]
    texts += [edit(texts[i], rng) for i in range(10)]  # 10 planted near duplicates
    found = {(i, j) for i, j, _ in near_duplicates(texts)}
    sets = [shingles(t) for t in texts]
    brute = {
        (i, j)
        for i, j in combinations(range(len(texts)), 2)
        if normalize(texts[i]) != normalize(texts[j]) and jaccard(sets[i], sets[j]) >= 0.8
    }
    assert found <= brute  # every reported pair is confirmed exactly
    assert len(found) >= 0.9 * len(brute) and len(brute) >= 10
    assert all((i, len(texts) - 10 + i) in found for i in range(10))


def test_overlap(alpaca: list[dict]) -> None:
    train = [r["instruction"] for r in alpaca[:400]]
    rng = random.Random(1)
    long_ones = [i for i, t in enumerate(train) if len(t) > 80][:3]
    eval_ = [
        train[5],
        " " + train[9],
        edit(train[long_ones[0]], rng, 1),
        "Something never seen in the training set at all.",
    ]
    exact, near = overlap(train, eval_)
    assert exact == [(0, 5), (1, 9)]
    assert [(i, j) for i, j, _ in near] == [(2, long_ones[0])]


def test_length_summary_by_hand() -> None:
    s = length_summary(list(range(1, 21)))  # 1..20
    assert s == {"count": 20, "min": 1, "mean": 10.5, "median": 10.5, "p95": 19, "max": 20}
    assert length_summary([]) == {"count": 0}


def test_data_check_on_shared_alpaca_and_oasst(shared_data: Path, alpaca: list[dict], tmp_path: Path) -> None:
    alpaca_file = shared_data / "alpaca" / "alpaca_5000.json"
    oasst_file = shared_data / "oasst" / "en_100_tree.jsonl"
    out = tmp_path / "check"
    rc = main(
        [
            "data",
            "check",
            str(alpaca_file),
            str(oasst_file),
            "--out",
            str(out),
            "--eval-file",
            str(shared_data / "self_instruct" / "seed_tasks.jsonl"),
        ]
    )
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    empty = [i for i, r in enumerate(alpaca) if not r["output"].strip()]  # counted here, independently
    assert report["by_format"]["alpaca"] == len(alpaca) - len(empty)
    assert report["rejected"] == len(empty) and report["rejected_by_reason"] == {"empty response": len(empty)}
    assert report["empty_responses"] == len(empty)
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert [q["item"] - 1 for q in quarantine] == empty and all(q["field"] == "output" for q in quarantine)
    assert report["length_unit"] == "whitespace words"
    words = [len(f"{r['instruction']} {r['input']} {r['output']}".split()) for r in alpaca if r["output"].strip()]
    assert report["lengths"]["total"]["count"] == report["records"] and report["lengths"]["total"]["max"] >= max(words)
    # exact duplicates, by a brute-force set over whole records; there are none in this sample
    whole = {" ".join(f"{r['instruction']} {r['input']} {r['output']}".split()) for r in alpaca}
    assert len(whole) == len(alpaca) and report["exact_duplicates"]["extra_copies"] == 0
    seed_tasks = [
        json.loads(line) for line in (shared_data / "self_instruct" / "seed_tasks.jsonl").read_text().splitlines()
    ]
    usable = sum(1 for t in seed_tasks for inst in t["instances"] if inst["output"].strip())
    assert report["eval_overlap"]["eval_records"] == usable


def test_data_check_default_dir_duplicates_tokens_and_strict(
    tmp_path: Path, alpaca: list[dict], tiny_tokenizer_dir: Path, tiny_tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sftlab.data.readers import read_records
    from sftlab.data.tokenize import encode_record

    rows = alpaca[:50] + [alpaca[7], alpaca[7], {"instruction": "x", "output": 3}]
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    assert main(["data", "check", str(data), "--tokenizer", str(tiny_tokenizer_dir)]) == 0
    report = json.loads((tmp_path / "runs" / "data_check" / "mine" / "report.json").read_text())
    assert report["exact_duplicates"]["groups"] == 1 and report["exact_duplicates"]["extra_copies"] == 2
    assert report["exact_duplicates"]["examples"] == [[f"{data}:8", f"{data}:51", f"{data}:52"]]
    assert report["rejected_by_reason"] == {"wrong type": 1} and report["length_unit"] == "tokens"
    sizes = [len(encode_record(r, tiny_tokenizer, 10**6).input_ids) for r in read_records([data]).records]
    assert report["lengths"]["total"]["max"] == max(sizes) and report["lengths"]["total"]["count"] == 52
    assert main(["data", "check", str(data), "--strict", "--out", str(tmp_path / "s")]) == 2
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["data", "check", str(empty), "--out", str(tmp_path / "e")]) == 1
    shutil.rmtree(tmp_path / "runs")
