"""Data augmentation against collapse: EDA-style word edits of the instruction, and template variety.

EDA (Wei & Zou 2019, "EDA: Easy Data Augmentation Techniques", reference code jasonwei20/eda_nlp)
makes ``num_aug`` edited copies of each example, each by one operation with strength ``alpha``. Here
``eda: {p, n}`` means: ``n`` edited copies of every record each epoch, beside the original, each by one
operation picked uniformly from

* random swap: swap two words, ``max(1, round(p * words))`` times;
* random deletion: delete each word with probability ``p`` (at least one word is kept);
* random insertion: insert a word, ``max(1, round(p * words))`` times, at a random position.

EDA inserts a WordNet synonym of a random word; with no WordNet here we insert a copy of a random word
of the same text, and leave out synonym replacement. Only the instruction is edited: alpaca's
``instruction`` (not its ``input``, which is data the answer depends on), a prompt, or the user turns
of a chat. The response is never touched. Whitespace between words is kept as it was.

Template variety picks one of the built-in prompt formats (:data:`sftlab.data.tokenize.FORMATS`) per
example at random. Both draw from the ``random.Random`` they are given, so a seed reproduces them.
"""

from __future__ import annotations

import dataclasses
import random
import re

from sftlab.data.records import Message, Record, alpaca_prompt
from sftlab.data.tokenize import FORMATS, PromptFormat

_SPACE = re.compile(r"(\s+)")


def _split(text: str) -> tuple[str, list[list[str]], str]:
    """(leading space, [[space before, word], ...], trailing space); the first word's space is ''."""
    core = text.strip()
    lead = text[: len(text) - len(text.lstrip())]
    trail = text[len(text.rstrip()) :] if core else ""
    parts = _SPACE.split(core) if core else []
    pairs = [["", parts[0]]] + [[parts[i], parts[i + 1]] for i in range(1, len(parts) - 1, 2)] if parts else []
    return lead, pairs, trail


def _join(lead: str, pairs: list[list[str]], trail: str) -> str:
    if pairs:
        pairs[0][0] = ""
    return lead + "".join(space + word for space, word in pairs) + trail


def _count(p: float, n_words: int) -> int:
    return max(1, round(p * n_words))


def random_swap(text: str, p: float, rng: random.Random) -> str:
    """Swap two random words, ``max(1, round(p * words))`` times."""
    lead, pairs, trail = _split(text)
    if len(pairs) < 2:
        return text
    for _ in range(_count(p, len(pairs))):
        i, j = rng.sample(range(len(pairs)), 2)
        pairs[i][1], pairs[j][1] = pairs[j][1], pairs[i][1]
    return _join(lead, pairs, trail)


def random_deletion(text: str, p: float, rng: random.Random) -> str:
    """Delete each word with probability ``p``; one random word survives if all would go."""
    lead, pairs, trail = _split(text)
    if len(pairs) < 2:
        return text
    kept = [pair for pair in pairs if rng.random() >= p]
    if not kept:
        kept = [rng.choice(pairs)]
    return _join(lead, kept, trail)


def random_insertion(text: str, p: float, rng: random.Random) -> str:
    """Insert a copy of a random word at a random position, ``max(1, round(p * words))`` times."""
    lead, pairs, trail = _split(text)
    if not pairs:
        return text
    for _ in range(_count(p, len(pairs))):
        word = rng.choice(pairs)[1]
        pos = rng.randrange(len(pairs) + 1)
        if pos == 0:
            pairs[0][0] = " "
        pairs.insert(pos, [" ", word])
    return _join(lead, pairs, trail)


OPERATIONS = (random_swap, random_deletion, random_insertion)


def eda(text: str, p: float, rng: random.Random) -> str:
    """One EDA operation, picked uniformly, applied to ``text`` with strength ``p``."""
    return rng.choice(OPERATIONS)(text, p, rng)


def augment_record(record: Record, p: float, rng: random.Random) -> Record:
    """A copy of ``record`` with its instruction edited by :func:`eda`; the response is the same object.

    Text records have no instruction and come back unchanged (the caller makes no copies of them).
    """
    if record.kind == "prompt_completion" and "instruction" in record.meta:
        instruction = eda(record.meta["instruction"], p, rng)
        meta = {**record.meta, "instruction": instruction}
        return dataclasses.replace(record, prompt=alpaca_prompt(instruction, record.meta.get("input", "")), meta=meta)
    if record.kind == "prompt_completion":
        return dataclasses.replace(record, prompt=eda(record.prompt or "", p, rng))
    if record.kind == "conversation":
        messages = [Message(m.role, eda(m.content, p, rng)) if m.role == "user" else m for m in record.messages or []]
        return dataclasses.replace(record, messages=messages)
    return record


def pick_format(rng: random.Random) -> PromptFormat:
    """A built-in prompt format, uniformly at random (template variety)."""
    return rng.choice(FORMATS)
