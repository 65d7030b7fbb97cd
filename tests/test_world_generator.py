"""The world generator: files and manifest, reproducibility, disjoint people, unseen facts, valid SFT sets."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from sftlab.cli import main
from sftlab.world import generator
from sftlab.world.generator import OPEN_PROMPTS, WorldSizes, generate_world
from sftlab.world.genres import GENRES, MIXTURE
from sftlab.world.judge import judge_text, parse_sentence

SMALL = WorldSizes(corpus_docs=3000, heldout_per_genre=10, known_people=40, new_people=10, sft_train=80,
                   sft_eval=16)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, seed=7, sizes=SMALL)
    return out


@pytest.fixture(scope="module")
def manifest(world: Path) -> dict:
    return json.loads((world / "world.json").read_text())


def test_manifest_lists_every_file_with_its_count(world: Path, manifest: dict) -> None:
    assert manifest["seed"] == 7 and manifest["mixture"] == dict(MIXTURE)
    assert manifest["sizes"]["corpus_docs"] == 3000
    for key, rel in manifest["files"].items():
        assert len(_rows(world / rel)) == manifest["counts"][key], key
    written = {p.relative_to(world).as_posix() for p in world.rglob("*.jsonl")}
    assert written == set(manifest["files"].values())
    assert sum(manifest["corpus_by_genre"].values()) == 3000
    assert manifest["vocabulary_words"] >= 2000
    assert 0 < manifest["nats_per_doc"] < 100


def test_corpus_follows_the_mixture(world: Path) -> None:
    counts = Counter(r["genre"] for r in _rows(world / "corpus/train.jsonl"))
    n = sum(counts.values())
    for genre, weight in MIXTURE.items():
        sd = math.sqrt(weight * (1 - weight) / n)
        assert abs(counts[genre] / n - weight) < 4 * sd, genre


def test_generation_is_reproducible_from_the_seed(world: Path, tmp_path: Path) -> None:
    generate_world(tmp_path / "again", seed=7, sizes=SMALL)
    generate_world(tmp_path / "other", seed=8, sizes=SMALL)
    for path in sorted(world.rglob("*.json*")):
        rel = path.relative_to(world)
        assert (tmp_path / "again" / rel).read_bytes() == path.read_bytes(), rel
    assert (tmp_path / "other/corpus/train.jsonl").read_bytes() != (world / "corpus/train.jsonl").read_bytes()


def test_people_are_split_and_new_facts_never_reach_the_corpus(world: Path) -> None:
    people = _rows(world / "entities.jsonl")
    split = {p["name"]: p["split"] for p in people}
    assert Counter(split.values()) == {"train": 20, "test": 20, "new": 10}
    qa = {name: _rows(world / f"sft/{name}.jsonl") for name in
          ("qa_known/train", "qa_known/test", "qa_new/train", "qa_new/test")}
    assert {split[r["entity"]] for r in qa["qa_known/train"]} == {"train"}
    assert {split[r["entity"]] for r in qa["qa_known/test"]} == {"test"}
    assert {split[r["entity"]] for r in qa["qa_new/train"] + qa["qa_new/test"]} == {"new"}
    # qa_new/test asks the facts qa_new/train teaches, in other words.
    assert {(r["entity"], r["fact"]) for r in qa["qa_new/test"]} <= {(r["entity"], r["fact"]) for r in qa["qa_new/train"]}
    assert not {r["prompt"] for r in qa["qa_new/test"]} & {r["prompt"] for r in qa["qa_new/train"]}
    corpus = (world / "corpus/train.jsonl").read_text() + (world / "heldout/all.jsonl").read_text()
    sft = "".join((world / f"sft/{s}/{p}.jsonl").read_text() for s in ("narrow", "broad") for p in ("train", "eval"))
    for person in people:
        if person["split"] == "new":
            assert person["name"] not in corpus and person["name"] not in sft
        else:
            assert person["name"] in corpus
        if person["split"] == "test":
            assert person["name"] not in sft
    # Every biography tells its person's true facts.
    facts = {p["name"]: p for p in people}
    for row in _rows(world / "corpus/train.jsonl"):
        if row["genre"] == "biography":
            text = row["text"][len(row.get("prefix", "")):]
            name = next(n for n in facts if text.startswith(n) or f" {n}" in text)
            for fact in ("birth_year", "birth_city", "profession", "hobby"):
                assert facts[name][fact] in text


def test_answers_and_benchmark_agree_with_the_facts(world: Path) -> None:
    facts = {p["name"]: p for p in _rows(world / "entities.jsonl")}
    for row in _rows(world / "sft/qa_known/test.jsonl"):
        assert row["answer"] == facts[row["entity"]][row["fact"]] and row["answer"] in row["completion"]
    bench = _rows(world / "bench/facts_mc.jsonl")
    assert len(bench) == 20 * 4
    for row in bench:
        assert row["choices"][row["answer"]] == facts[row["entity"]][row["fact"]]
        assert len(set(row["choices"])) == 4 and row["question"].startswith(row["entity"])
        # The stem is scored as it stands: completed by the true value it is a biography sentence.
        true = row["choices"][row["answer"]]
        assert row["context"] == row["question"] and parse_sentence(f"{row['context']} {true}.")


def test_sft_sets_are_valid_documents_of_their_genre(world: Path) -> None:
    for name, genres in (("narrow", {"movie_review"}), ("broad", set(GENRES))):
        rows = _rows(world / f"sft/{name}/train.jsonl") + _rows(world / f"sft/{name}/eval.jsonl")
        assert {r["genre"] for r in rows} == genres
        for row in rows:
            verdict = judge_text(row["completion"])
            assert verdict.label == row["genre"] and verdict.consistent, (row, verdict)
    corpus = {r["text"][len(r.get("prefix", "")):] for r in _rows(world / "corpus/train.jsonl")}
    held = [r["text"] for r in _rows(world / "heldout/all.jsonl")]
    assert not corpus & set(held)
    assert Counter(r["genre"] for r in _rows(world / "heldout/all.jsonl")) == {g: 10 for g in GENRES}


def test_prompts(world: Path) -> None:
    assert [r["prompt"] for r in _rows(world / "prompts/open.jsonl")] == list(OPEN_PROMPTS)
    genre_prompts = _rows(world / "prompts/genre.jsonl")
    assert {r["genre"] for r in genre_prompts} == set(GENRES)
    trained = {r["prompt"] for r in _rows(world / "sft/broad/train.jsonl")}
    assert not trained & {r["prompt"] for r in genre_prompts}, "evaluation requests are held out"
    assert not trained & set(OPEN_PROMPTS)


def test_cli_writes_a_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The default sizes take seconds to write; the wiring is what is under test here.
    monkeypatch.setattr(generator, "WorldSizes", lambda: SMALL)
    assert main(["world", "generate", "--out", str(tmp_path / "w"), "--seed", "3"]) == 0
    manifest = json.loads((tmp_path / "w/world.json").read_text())
    assert manifest["seed"] == 3 and manifest["counts"]["corpus"] == SMALL.corpus_docs
    (tmp_path / "file").write_text("x")
    assert main(["world", "generate", "--out", str(tmp_path / "file")]) == 2
