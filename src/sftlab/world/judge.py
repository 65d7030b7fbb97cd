"""The world's judge: exact genre attribution, mode coverage and fact accuracy, as pure functions on strings.

Validity rule. A text is a *valid* document of genre G when

1. it is not empty and ends a sentence (``.``, ``!`` or ``?``): a text cut off mid-sentence is invalid;
2. every sentence (split after ``.!?`` and whitespace) starts with a capital letter or a digit and parses
   under one of G's sentence templates, with every slot filled by an entry of its word class;
3. the first sentence parses as one of G's openings, the last as one of its closings and every sentence in
   between as one of its body sentences, of which there are at least one and at most as many as G's
   documents have. The grammar is a little larger than what the generator writes: it also accepts the near
   misses listed as ``accepted`` in each genre (a biography sentence that gives one fact, not two).

No sentence parses under two genres' grammars unless its words are shared, and the word classes of the
genres are disjoint, so the genre of a valid text is exact. Anything else is ``invalid``, with the reason.

Consistency is a separate score on valid texts: the cross-sentence rules of the grammar hold (see
:mod:`sftlab.world.grammar`: a bound variable keeps its value, two variables of a class differ, listed
ingredients are the ones used, an axis such as a review's mood keeps its group), every required variable
of the genre is stated (a biography gives all four facts), and the genre's own check passes (a winner's
score is higher).
Sentences are read left to right and, where one matches several templates, the first reading that keeps
the document consistent is taken.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache

from sftlab.world.entities import FACTS
from sftlab.world.genres import GENRES, MIXTURE
from sftlab.world.grammar import (
    SENTENCE_END,
    DocState,
    Genre,
    Match,
    Template,
    compile_template,
    consume,
    split_sentences,
    uncapitalize,
    words_of,
)

INVALID = "invalid"


@dataclass(frozen=True)
class Verdict:
    """The judge's reading of one text: its genre (None when invalid), validity and consistency."""

    genre: str | None
    valid: bool
    consistent: bool
    reason: str

    @property
    def label(self) -> str:
        """The genre, or ``"invalid"``."""
        return self.genre if self.valid and self.genre else INVALID


@cache
def _compiled() -> dict[str, list[tuple[Template, frozenset[str], re.Pattern[str]]]]:
    """Per genre: each template with the literal words it needs (a cheap prefilter) and its regex."""
    return {
        name: [(t, t.literal_words, compile_template(g, t)) for t in g.templates]
        for name, g in GENRES.items()
    }


def parse_sentence(sentence: str) -> list[Match]:
    """Every (genre, template) reading of one sentence; empty when it parses under no grammar."""
    if sentence[:1].islower():
        return []
    vocab = words_of(sentence)
    candidates = (sentence, uncapitalize(sentence))
    matches: list[Match] = []
    for name, templates in _compiled().items():
        if not vocab <= GENRES[name].lexicon:
            continue
        for template, needed, regex in templates:
            if not needed <= vocab:
                continue
            for text in candidates:
                m = regex.fullmatch(text)
                if m:
                    matches.append(Match(name, template, m.groups()))
                    break
    return matches


def judge_text(text: str) -> Verdict:
    """Attribute ``text`` to its genre or call it invalid; on valid texts, also judge consistency."""
    stripped = text.strip()
    if not stripped:
        return Verdict(None, False, False, "empty text")
    if not stripped.endswith(SENTENCE_END):
        return Verdict(None, False, False, "truncated: the text does not end a sentence")
    sentences = split_sentences(stripped)
    readings: list[list[Match]] = []
    genres = set(GENRES)
    for i, sentence in enumerate(sentences, 1):
        matches = parse_sentence(sentence)
        if not matches:
            return Verdict(None, False, False, f"sentence {i} does not parse: {sentence!r}")
        genres &= {m.genre for m in matches}
        if not genres:
            return Verdict(None, False, False, f"sentence {i} belongs to another genre: {sentence!r}")
        readings.append(matches)
    problems = []
    for name in sorted(genres):
        framed = _frame(GENRES[name], [[m for m in ms if m.genre == name] for ms in readings])
        if isinstance(framed, str):
            problems.append(framed)
            continue
        why = _inconsistency(GENRES[name], framed)
        return Verdict(name, True, why is None, why or "ok")
    return Verdict(None, False, False, "; ".join(problems))


def _frame(genre: Genre, readings: list[list[Match]]) -> list[list[Match]] | str:
    """Keep the readings that fit the document frame (opening, body, closing), or say why none do."""
    if len(readings) < 2:
        return f"a {genre.label} needs an opening and a closing sentence"
    sections = ["open"] + ["body"] * (len(readings) - 2) + ["close"]
    kept = [[m for m in ms if m.template.section == s] for ms, s in zip(readings, sections)]
    where = {"open": "an opening", "body": "a body sentence", "close": "a closing"}
    for i, (ms, s) in enumerate(zip(kept, sections), 1):
        if not ms:
            return f"sentence {i} is not {where[s]} of a {genre.label}"
    hi = genre.body_range[1]
    if not 1 <= len(readings) - 2 <= hi:
        return f"a {genre.label} has 1 to {hi} body sentences, this text has {len(readings) - 2}"
    return kept


def _inconsistency(genre: Genre, readings: list[list[Match]]) -> str | None:
    """Why the document breaks a cross-sentence rule, or None when it keeps them all."""
    state = DocState()
    for i, matches in enumerate(readings, 1):
        errors = []
        for match in matches:
            trial = state.copy()
            error = consume(genre, match, trial)
            if error is None:
                state = trial
                break
            errors.append(error)
        else:
            return f"sentence {i}: {errors[0]}"
    missing = [v for v in genre.required_vars if v not in state.bindings]
    if missing:
        return f"never says its {missing[0]!r}"
    return genre.check(state.bindings) if genre.check else None


# --------------------------------------------------------------------------------------------------
# Aggregates


def validity_rate(texts: Sequence[str]) -> float:
    """Fraction of ``texts`` that are valid documents."""
    if not texts:
        raise ValueError("validity_rate needs at least one text")
    return sum(judge_text(t).valid for t in texts) / len(texts)


def mode_coverage(
    texts: Sequence[str], mixture: Mapping[str, float] = MIXTURE, threshold: float = 0.02
) -> dict[str, object]:
    """Genre histogram of ``texts`` (e.g. samples on open prompts) against the pretraining mixture.

    Shares are over the valid texts: ``p_g = n_g / n_valid``. Returns the counts (with ``invalid``), the
    shares, ``covered`` = the number of genres with ``p_g > threshold``, the entropy
    ``H = -sum_g p_g ln p_g`` (nats; the mixture's own entropy is given beside it) and
    ``KL(p || mixture) = sum_g p_g ln(p_g / m_g)`` (nats; finite because the mixture covers every genre).
    With no valid text, shares are empty and entropy, KL and consistency are None.
    """
    if not texts:
        raise ValueError("mode_coverage needs at least one text")
    verdicts = [judge_text(t) for t in texts]
    counts = Counter(v.label for v in verdicts)
    n_valid = len(texts) - counts[INVALID]
    histogram = {g: counts[g] for g in mixture} | {INVALID: counts[INVALID]}
    shares = {g: counts[g] / n_valid for g in mixture} if n_valid else {}
    entropy = -sum(p * math.log(p) for p in shares.values() if p > 0) if n_valid else None
    kl = sum(p * math.log(p / mixture[g]) for g, p in shares.items() if p > 0) if n_valid else None
    consistent = sum(v.consistent for v in verdicts if v.valid) / n_valid if n_valid else None
    return {
        "n": len(texts),
        "valid_rate": n_valid / len(texts),
        "consistent_rate": consistent,
        "histogram": histogram,
        "shares": shares,
        "covered": sum(p > threshold for p in shares.values()),
        "n_genres": len(mixture),
        "threshold": threshold,
        "entropy": entropy,
        "mixture_entropy": -sum(m * math.log(m) for m in mixture.values() if m > 0),
        "kl_to_mixture": kl,
    }


def genre_adherence(texts: Sequence[str], requested: Sequence[str]) -> float:
    """Fraction of answers to genre prompts that are valid documents of the requested genre."""
    if len(texts) != len(requested) or not texts:
        raise ValueError("genre_adherence needs one requested genre per text, and at least one text")
    return sum(judge_text(t).label == g for t, g in zip(texts, requested)) / len(texts)


@cache
def _fact_regex(fact: str) -> re.Pattern[str]:
    """Every value of ``fact``'s word class, as whole words."""
    cls = GENRES["biography"].classes[FACTS[fact].cls]
    return re.compile(r"(?<![A-Za-z0-9])" + cls.pattern + r"(?![A-Za-z0-9])")


def fact_values(answer: str, fact: str) -> set[str]:
    """The values of ``fact`` (e.g. every birth year the world knows) that ``answer`` mentions."""
    if fact not in FACTS:
        raise ValueError(f"unknown fact {fact!r}; the world's facts are {sorted(FACTS)}")
    return set(_fact_regex(fact).findall(answer))


def fact_correct(answer: str, fact: str, value: str) -> bool:
    """True when ``answer`` names the true ``value`` and no other value of the same fact (no hedging)."""
    return fact_values(answer, fact) == {value}


def fact_accuracy(answers: Sequence[str], questions: Sequence[Mapping[str, str]]) -> float:
    """Share of ``answers`` that are :func:`fact_correct` for their question (a record with ``fact``, ``answer``)."""
    if len(answers) != len(questions) or not answers:
        raise ValueError("fact_accuracy needs one answer per question, and at least one")
    return sum(fact_correct(a, q["fact"], q["answer"]) for a, q in zip(answers, questions)) / len(answers)
