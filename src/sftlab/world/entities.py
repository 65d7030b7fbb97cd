"""The world's people and their facts, and the ways to ask about them.

Every person has a unique full name, a gender (from the first name) and four facts drawn uniformly from the
biography word classes. Questions come in two disjoint sets of paraphrases: set A is used in training sets,
set B in test sets, so a test question is never a training question reworded by chance.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from sftlab.world.genres import GENRES
from sftlab.world.grammar import DocState


class Fact(NamedTuple):
    """A fact's biography variable and the word class its values come from."""

    var: str
    cls: str


FACTS: dict[str, Fact] = {
    "birth_year": Fact("by", "year"),
    "birth_city": Fact("bc", "city"),
    "profession": Fact("pro", "profession"),
    "hobby": Fact("hb", "hobby"),
}

# fact -> (set A: training paraphrases, set B: test paraphrases)
QUESTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "birth_year": (("When was {name} born?", "In which year was {name} born?"),
                   ("What year was {name} born in?", "What is the birth year of {name}?")),
    "birth_city": (("Where was {name} born?", "In which town was {name} born?"),
                   ("What is the home town of {name}?", "Which town did {name} grow up in?")),
    "profession": (("What did {name} do for a living?", "What was the job of {name}?"),
                   ("What was the profession of {name}?", "How did {name} earn a living?")),
    "hobby": (("What did {name} enjoy in free time?", "What was the hobby of {name}?"),
              ("What was the favourite pastime of {name}?", "What was {name} fond of?")),
}
ANSWERS: dict[str, str] = {
    "birth_year": "{name} was born in {value}.",
    "birth_city": "{name} was born in {value}.",
    "profession": "{name} worked as a {value}.",
    "hobby": "{name} enjoyed {value}.",
}
# Cloze stems in the words of the biographies, for scoring a base model that never saw a question (a stem
# may state another fact of the person, as the biographies do).
CLOZE: dict[str, str] = {
    "birth_year": "{name} was born in {birth_city} in",
    "birth_city": "{name} was born in {birth_year} in",
    "profession": "{name} worked as a",
    "hobby": "{name} worked as a {profession} and loved",
}


@dataclass(frozen=True)
class Entity:
    """A person of the world."""

    first: str
    last: str
    gender: str
    facts: dict[str, str]

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"

    def state(self) -> DocState:
        """A document state with this person's name, gender and facts bound, to sample a biography."""
        state = DocState()
        state.bind("pf", "first", self.first)
        state.bind("pl", "last", self.last)
        state.axes["gender"] = self.gender
        for fact, (var, cls) in FACTS.items():
            state.bind(var, cls, self.facts[fact])
        return state

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "first": self.first, "last": self.last, "gender": self.gender, **self.facts}


def make_entities(rng: random.Random, n: int) -> list[Entity]:
    """``n`` people with distinct full names and facts, each uniform over its class.

    Names and fact values are dealt round-robin from independently shuffled lists, so the first people use
    every name and every value there is (the corpus then holds the whole vocabulary of facts); full names
    stay distinct up to the least common multiple of the two name lists' lengths.
    """
    bio = GENRES["biography"]
    firsts = bio.classes["first"]
    limit = math.lcm(len(firsts.entries), len(bio.classes["last"].entries))
    if n > limit:
        raise ValueError(f"the world has {limit} distinct round-robin names, {n} people were asked for")

    def deal(cls: str) -> list[str]:
        values = list(bio.classes[cls].entries)
        rng.shuffle(values)
        return [values[i % len(values)] for i in range(n)]

    first, last = deal("first"), deal("last")
    facts = {fact: deal(cls) for fact, (_, cls) in FACTS.items()}
    return [Entity(first[i], last[i], firsts.group_of[first[i]], {f: v[i] for f, v in facts.items()})
            for i in range(n)]


def questions(entity: Entity, paraphrases: int) -> Iterator[tuple[str, str, str]]:
    """``(fact, question, answer)`` for each fact: the set-A questions (0) or the set-B ones (1)."""
    for fact, sets in QUESTIONS.items():
        for q in sets[paraphrases]:
            yield fact, q.format(name=entity.name), ANSWERS[fact].format(name=entity.name, value=entity.facts[fact])


def cloze(entity: Entity, fact: str) -> str:
    """The sentence stem whose continuation is ``fact``'s value."""
    return CLOZE[fact].format(name=entity.name, **entity.facts)
