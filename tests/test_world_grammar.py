"""The world's grammar: its lexicon keeps genres apart, and the generator's log-probabilities are exact."""

from __future__ import annotations

import math
import random
import re
from collections import Counter

import pytest

from sftlab.world.generator import vocabulary
from sftlab.world.genres import GENRES
from sftlab.world.entities import make_entities
from sftlab.world.grammar import DocState, Genre, grouped, render, sample_document, split_sentences, words
from sftlab.world.judge import judge_text, parse_sentence


def test_vocabulary_has_at_least_2000_words() -> None:
    assert len(vocabulary()) >= 2000


def test_word_classes_of_different_genres_are_disjoint() -> None:
    """No entry is in two genres' classes (numbers in digits are shared: they carry no genre)."""
    owner: dict[str, str] = {}
    for genre in GENRES.values():
        for cls in genre.classes.values():
            for entry in (e for e in cls.entries if not e.isdigit()):
                assert owner.setdefault(entry, genre.name) == genre.name, (
                    f"{entry!r} is in {owner[entry]} and {genre.name}")


def test_every_class_is_used_and_articles_agree() -> None:
    for genre in GENRES.values():
        slots = [(t, s) for t in genre.templates + genre.specific_requests for s in t.slots]
        assert {s.cls for _, s in slots} == set(genre.classes), genre.name
        for template in genre.templates + genre.specific_requests:
            for before, slot in zip(template.parts, template.parts[1:]):
                if not isinstance(before, str) or isinstance(slot, str):
                    continue
                article = re.search(r"(?:^|\s)(an?) $", before)
                if article:
                    vowel = article.group(1) == "an"
                    bad = [e for e in genre.classes[slot.cls].entries if (e[0].lower() in "aeiou") != vowel]
                    assert not bad, f"{template.source!r}: {article.group(1)} {bad[:3]}"


def test_every_template_is_reachable_and_genres_are_rich() -> None:
    rng = random.Random(0)
    for genre in GENRES.values():
        assert len(genre.templates) >= 12, genre.name
        assert len(genre.requests) >= 6 and genre.specific_requests
        line_of = {t.source: t.line for t in genre.templates}
        used = {line_of[t] for _ in range(300) for t in sample_document(genre, rng).templates}
        assert used == {t.line for t in genre.templates if t.sampled}, genre.name


def test_documents_answer_the_requests_that_name_a_subject() -> None:
    """Whatever a specific request names (a film, a town, a hero) the document written for it states."""
    rng = random.Random(3)
    for genre in GENRES.values():
        for request in genre.specific_requests:
            for _ in range(30):
                state = DocState()
                if genre.name == "biography":
                    state = make_entities(rng, 1)[0].state()
                render(genre, request, state, rng)
                doc = sample_document(genre, rng, state)
                for slot in request.slots:
                    if slot.op == "=":
                        assert state.bindings[slot.var] in doc.text, (request.source, doc.text)
                    elif genre.classes[slot.cls].axis:
                        axis = genre.classes[slot.cls].axis
                        assert _axis_groups(genre, doc.text, axis) == {state.axes[axis]}, (request.source, doc.text)


def _axis_groups(genre: Genre, text: str, axis: str) -> set[str]:
    """The groups of ``axis`` that the words of ``text`` belong to, read through the judge's parser."""
    groups = set()
    for sentence in split_sentences(text):
        match = next(m for m in parse_sentence(sentence) if m.genre == genre.name)
        for slot, value in zip(match.template.slots, match.values):
            if genre.classes[slot.cls].axis == axis:
                groups.add(genre.classes[slot.cls].group_of[value])
    return groups


def _toy() -> Genre:
    """Small enough that 20k samples see every document: the rarest has probability 1/216."""
    return Genre.build(
        name="toy",
        label="toy",
        classes=[words("who", ["Ann", "Bob"]), grouped("feel", "mood", pos=["glad"], neg=["sad"]),
                 words("thing", ["cake"])],
        opening=["{who=w} woke up with {thing+t}."],
        body=["{who=w} was {feel}.", "{who=w} ate {thing*t}.", "It felt {feel}."],
        closing=["{who=w} [slept|rested]."],
        requests=["Tell a toy story."],
        n_optional=(1, 2),
    )


def test_document_nats_are_the_exact_log_probability() -> None:
    """On a small grammar (Zipf weights, an axis, a list), exp(-nats) summed over every document is 1."""
    toy = _toy()
    rng = random.Random(0)
    seen: dict[str, float] = {}
    freq: Counter[str] = Counter()
    n = 20_000
    for _ in range(n):
        doc = sample_document(toy, rng)
        assert seen.setdefault(doc.text, doc.nats) == pytest.approx(doc.nats)
        freq[doc.text] += 1
    assert sum(math.exp(-v) for v in seen.values()) == pytest.approx(1.0, abs=1e-9)
    for text, count in freq.most_common(5):
        p = math.exp(-seen[text])
        assert abs(count / n - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_axis_and_bindings_hold_through_a_document() -> None:
    toy = _toy()
    rng = random.Random(1)
    for _ in range(200):
        text = sample_document(toy, rng).text
        names = set(re.findall(r"\b(Ann|Bob)\b", text))
        moods = set(re.findall(r"\b(glad|sad)\b", text))
        assert len(names) == 1 and len(moods) <= 1, text


def test_grammar_rejects_bad_definitions() -> None:
    with pytest.raises(ValueError, match="unknown class"):
        Genre.build("x", "x", [words("a", ["b"])], ["{nope}."], ["{a}."], ["{a}."], ["?"], n_optional=(1, 1))
    with pytest.raises(ValueError, match="bad entry"):
        Genre.build("x", "x", [words("a", ["b. c"])], ["{a}."], ["{a}."], ["{a}."], ["?"], n_optional=(1, 1))
    with pytest.raises(ValueError, match="either required topics or optional"):
        Genre.build("x", "x", [words("a", ["b"])], ["{a}."], {"t": ["{a}."]}, ["{a}."], ["?"],
                    required_topics=("t",), n_optional=(1, 3))
    assert [t.source for t in _toy().closing] == ["{who=w} slept.", "{who=w} rested."]


def test_accepted_near_misses_are_valid_but_never_written() -> None:
    """A biography sentence with one fact parses, so the document is valid; it is inconsistent (facts missing)."""
    text = ("Biography: Edith Vance was a potter. Edith was born in 1843. She loved chess. "
            "That is the life of Edith Vance.")
    verdict = judge_text(text)
    assert verdict.valid and verdict.genre == "biography"
    assert not verdict.consistent and "bc" in verdict.reason
    rng = random.Random(4)
    written = {t for _ in range(200) for t in sample_document(GENRES["biography"], rng).templates}
    assert not written & {t.source for t in GENRES["biography"].body if not t.sampled}


def test_judge_reads_documents_of_all_lengths() -> None:
    """Documents at both ends of each genre's body range are valid; one sentence more or less is not."""
    rng = random.Random(2)
    for genre in GENRES.values():
        lo, hi = genre.body_range
        lengths = Counter()
        for _ in range(120):
            doc = sample_document(genre, rng)
            n_body = len(re.split(r"(?<=[.!?]) ", doc.text)) - 2
            lengths[n_body] += 1
            assert judge_text(doc.text).valid
        assert set(lengths) == set(range(lo, hi + 1)), genre.name
