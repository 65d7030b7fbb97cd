"""The world's judge: exact attribution of generated documents, corrupted text is invalid, the aggregates."""

from __future__ import annotations

import math
import random

import pytest

from sftlab.world.entities import make_entities
from sftlab.world.genres import GENRES, MIXTURE
from sftlab.world.grammar import Document, sample_document, split_sentences
from sftlab.world.judge import (
    fact_accuracy,
    fact_correct,
    genre_adherence,
    judge_text,
    mode_coverage,
    validity_rate,
)

NAMES = list(GENRES)


def _documents(n: int, seed: int = 0) -> list[Document]:
    """``n`` documents, the genres in turn; biographies about real people of a world, as in the corpus."""
    rng = random.Random(seed)
    people = make_entities(rng, 50)
    return [
        sample_document(GENRES[g], rng, rng.choice(people).state() if g == "biography" else None)
        for g in (NAMES[i % len(NAMES)] for i in range(n))
    ]


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    return _documents(1000)


def test_every_generated_document_is_attributed_to_its_genre(docs: list[Document]) -> None:
    verdicts = [judge_text(d.text) for d in docs]
    wrong = [(d.genre, v, d.text) for d, v in zip(docs, verdicts) if v.label != d.genre]
    assert not wrong, wrong[:3]
    inconsistent = [(v.reason, d.text) for d, v in zip(docs, verdicts) if not v.consistent]
    assert not inconsistent, inconsistent[:3]
    assert {d.genre for d in docs} == set(GENRES)


def _foreign_words(genre: str) -> list[str]:
    """Single-word class entries of other genres that appear nowhere in ``genre``'s grammar."""
    own = GENRES[genre].lexicon
    return sorted({e for g in GENRES.values() if g.name != genre for c in g.classes.values() for e in c.entries
                   if " " not in e and e.isalpha() and e.lower() not in own})


def _swap_in_foreign_word(doc: Document, rng: random.Random) -> str:
    """Replace one word of one sentence by a word of another genre."""
    sentences = split_sentences(doc.text)
    i = rng.randrange(len(sentences))
    tokens = sentences[i].split(" ")
    j = rng.randrange(len(tokens))
    tail = tokens[j][len(tokens[j].rstrip(",.!?:")):]
    tokens[j] = rng.choice(_foreign_words(doc.genre)) + tail
    sentences[i] = " ".join(tokens)
    return " ".join(sentences)


def _shuffle_words(doc: Document, rng: random.Random) -> str:
    """Shuffle the words of one sentence (keeping its final mark), until its order differs."""
    sentences = split_sentences(doc.text)
    i = rng.randrange(len(sentences))
    body, mark = sentences[i][:-1], sentences[i][-1]
    tokens = body.split(" ")
    shuffled = tokens[:]
    while shuffled == tokens:
        rng.shuffle(shuffled)
    sentences[i] = " ".join(shuffled) + mark
    return " ".join(sentences)


def _truncate(doc: Document, rng: random.Random) -> str:
    """Cut the text inside its last sentence (what a generation stopped by max_new_tokens looks like)."""
    last = split_sentences(doc.text)[-1]
    start = len(doc.text) - len(last)
    return doc.text[: rng.randrange(start + 1, len(doc.text) - 1)]


def _random_words(doc: Document, rng: random.Random) -> str:
    """Words of the world's lexicon in random order, dressed up as sentences."""
    lexicon = sorted(w for g in GENRES.values() for w in g.lexicon if w.isalpha())
    sentences = [" ".join(rng.choices(lexicon, k=rng.randint(4, 12))).capitalize() + "." for _ in range(5)]
    return " ".join(sentences)


@pytest.mark.parametrize("corrupt", [_swap_in_foreign_word, _shuffle_words, _truncate, _random_words])
def test_corrupted_text_is_invalid(docs: list[Document], corrupt) -> None:
    rng = random.Random(1)
    for doc in docs[:240]:
        text = corrupt(doc, rng)
        verdict = judge_text(text)
        assert not verdict.valid and verdict.label == "invalid", (corrupt.__name__, text)
        assert verdict.reason


def test_broken_frames_are_invalid(docs: list[Document]) -> None:
    for a, b in zip(docs[:80], docs[1:81]):  # neighbours are of different genres
        sentences = split_sentences(a.text)
        assert not judge_text(" ".join(sentences[1:])).valid, "no opening"
        assert not judge_text(" ".join(sentences[:-1])).valid, "no closing"
        assert not judge_text(a.text + " " + b.text).valid, "two genres"
        body, most = sentences[1:-1], GENRES[a.genre].body_range[1]
        too_long = sentences[:1] + body * (most // len(body) + 1) + sentences[-1:]
        assert not judge_text(" ".join(too_long)).valid, "too many body sentences"
        assert not judge_text(" ".join(sentences[:1] + sentences[-1:])).valid, "no body sentence"
    assert judge_text("").reason == "empty text"
    assert not judge_text(docs[0].text.lower()).valid, "sentences must start with a capital"


def test_consistency_is_judged_apart_from_validity() -> None:
    review = ("Movie review: Hidden Station is a brilliant thriller. The pace is brisk. "
              "The story is tedious from start to finish. I give Hidden Station five stars.")
    verdict = judge_text(review)
    assert verdict.valid and verdict.genre == "movie_review"
    assert not verdict.consistent and "mood" in verdict.reason
    recipe = ("Recipe: this hearty stew needs carrots, leeks and barley. Chop the carrots. Add the salmon and stir well. "
              "This stew serves 4 people.")
    verdict = judge_text(recipe)
    assert verdict.valid and not verdict.consistent and "salmon" in verdict.reason
    match = ("Match report: the Falcons beat the Lions 1 to 3. The referee showed 2 yellow cards. "
             "The Lions never recovered. The Falcons play again next week.")
    verdict = judge_text(match)
    assert verdict.valid and not verdict.consistent and "winners" in verdict.reason
    fixed = match.replace("1 to 3", "3 to 1")
    assert judge_text(fixed).consistent


def test_mode_coverage_by_hand(docs: list[Document]) -> None:
    weather = [d.text for d in docs if d.genre == "weather"][:2]
    recipe = [d.text for d in docs if d.genre == "recipe"][:1]
    texts = weather + recipe + ["not a document"]
    cov = mode_coverage(texts, MIXTURE)
    assert cov["valid_rate"] == 0.75
    assert cov["histogram"]["weather"] == 2 and cov["histogram"]["invalid"] == 1
    p = {"weather": 2 / 3, "recipe": 1 / 3}
    assert cov["shares"]["weather"] == pytest.approx(p["weather"])
    assert cov["covered"] == 2
    assert cov["entropy"] == pytest.approx(-(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3))
    kl = sum(v * math.log(v / MIXTURE[g]) for g, v in p.items())
    assert cov["kl_to_mixture"] == pytest.approx(kl)
    assert cov["mixture_entropy"] == pytest.approx(-sum(m * math.log(m) for m in MIXTURE.values()))
    # Samples drawn from the mixture itself cover every genre and sit close to it.
    full = mode_coverage([d.text for d in docs], MIXTURE)
    assert full["covered"] == 8 and full["entropy"] == pytest.approx(math.log(8))
    assert mode_coverage(["nothing valid"])["entropy"] is None
    assert validity_rate(texts) == 0.75


def test_genre_adherence(docs: list[Document]) -> None:
    texts = [d.text for d in docs[:16]]
    assert genre_adherence(texts, [d.genre for d in docs[:16]]) == 1.0
    assert genre_adherence(texts, ["recipe"] * 16) == pytest.approx(2 / 16)


def test_fact_accuracy_by_hand() -> None:
    assert fact_correct("Edith Vance was born in 1843.", "birth_year", "1843")
    assert not fact_correct("Edith Vance was born in 1843 or 1844.", "birth_year", "1843"), "hedging"
    assert not fact_correct("Edith Vance was born in 18431.", "birth_year", "1843"), "whole words only"
    assert fact_correct("She grew up in Port Agnes.", "birth_city", "Port Agnes")
    assert not fact_correct("She grew up in Port Agnesley.", "birth_city", "Port Agnes")
    assert fact_correct("In her free time she enjoyed kite flying.", "hobby", "kite flying")
    questions = [{"fact": "profession", "answer": "potter"}, {"fact": "profession", "answer": "baker"}]
    assert fact_accuracy(["He worked as a potter.", "He worked as a potter."], questions) == 0.5
    with pytest.raises(ValueError, match="unknown fact"):
        fact_correct("x", "shoe size", "9")
