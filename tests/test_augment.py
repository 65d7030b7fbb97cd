"""Augmentation: EDA edits only the instruction, template variety varies the prompt, the seed reproduces both."""

from __future__ import annotations

import copy
import random
from collections import Counter
from pathlib import Path

import pytest

from sftlab.train.remedies.augment import AugmentSettings, EdaSettings
from sftlab.data.augment import augment_record, random_deletion, random_insertion, random_swap
from sftlab.data.dataset import SFTDataset
from sftlab.data.readers import read_records
from sftlab.data.records import Message, Origin, Record
from sftlab.data.tokenize import FORMATS
from sftlab.errors import UserError
from sftlab.models.tokens import IGNORE_INDEX

TEXT = "Write a short poem\nabout the  sea and the sky at night"


def words(text: str) -> list[str]:
    return text.split()


def test_operations() -> None:
    rng = random.Random(0)
    for _ in range(50):
        swapped = random_swap(TEXT, 0.2, rng)
        assert Counter(words(swapped)) == Counter(words(TEXT))
        deleted = random_deletion(TEXT, 0.3, rng)
        it = iter(words(TEXT))
        assert all(w in it for w in words(deleted)) and 1 <= len(words(deleted)) <= len(words(TEXT))
        inserted = random_insertion(TEXT, 0.2, rng)
        assert len(words(inserted)) == len(words(TEXT)) + 2  # round(0.2 * 11 words) insertions
        assert set(words(inserted)) == set(words(TEXT))
    # separators other than the edited positions survive (the newline and the double space)
    assert "\n" in random_swap(TEXT, 0.1, random.Random(1)) and "  " in random_swap(TEXT, 0.1, random.Random(1))
    assert random_swap("one", 0.5, rng) == "one" and random_deletion("one", 0.9, rng) == "one"


def test_only_the_instruction_changes() -> None:
    alpaca = Record(
        "prompt_completion",
        Origin("t", 1),
        prompt="Sort these words now.\n\nb, a, c",
        completion="a, b, c",
        format="alpaca",
        meta={"instruction": "Sort these words now.", "input": "b, a, c"},
    )
    chat = Record(
        "conversation",
        Origin("t", 2),
        messages=[
            Message("system", "You are terse and exact."),
            Message("user", "Tell me a fact about owls please"),
            Message("assistant", "Owls can rotate their heads far."),
            Message("user", "And one more fact about cats"),
            Message("assistant", "Cats sleep a lot."),
        ],
    )
    rng = random.Random(0)
    changed = 0
    for _ in range(20):
        a = augment_record(alpaca, 0.3, rng)
        assert a.completion is alpaca.completion and a.meta["input"] == "b, a, c"
        assert a.prompt == f"{a.meta['instruction']}\n\nb, a, c"
        c = augment_record(chat, 0.3, rng)
        assert [m for m in c.messages if m.role != "user"] == [m for m in chat.messages if m.role != "user"]
        changed += a.meta["instruction"] != alpaca.meta["instruction"]
    assert changed > 10
    assert alpaca.meta["instruction"] == "Sort these words now."  # the original is not mutated


def trained_sequences(rows: list[dict]) -> list[list[int]]:
    return [[t for t in r["labels"] if t != IGNORE_INDEX] for r in rows]


def test_dataset_augmentation_keeps_responses_and_is_reproducible(tiny_tokenizer, shared_data: Path) -> None:
    records = read_records([shared_data / "alpaca" / "alpaca_5000.json"]).records[:40]
    settings = AugmentSettings(eda=EdaSettings(p=0.2, n=2), template_variety=True)
    plain = SFTDataset(records, tiny_tokenizer, max_length=1024)
    ds = SFTDataset(records, tiny_tokenizer, max_length=1024, seed=7, augment=settings)
    assert len(ds) == 3 * len(plain) and ds.stats.augmented == 2 * len(records)
    # every row's trained tokens (the response and EOS) are exactly its original's
    original = trained_sequences(list(plain))
    assert trained_sequences(list(ds)) == [seq for seq in original for _ in range(3)]
    prompts = [
        tiny_tokenizer.decode([t for t, label in zip(r["input_ids"], r["labels"]) if label == IGNORE_INDEX]) for r in ds
    ]
    used = {f.name for f in FORMATS for p in prompts if f.instruction_header in p and f.response_header in p}
    assert used == {f.name for f in FORMATS}
    assert prompts[1] != prompts[0]  # an augmented copy differs from its original
    ds.set_epoch(1)
    epoch1 = [r["input_ids"] for r in ds]
    same_seed = SFTDataset(records, tiny_tokenizer, max_length=1024, seed=7, augment=settings)
    same_seed.set_epoch(1)
    assert [r["input_ids"] for r in same_seed] == epoch1
    other_seed = SFTDataset(records, tiny_tokenizer, max_length=1024, seed=8, augment=settings)
    other_seed.set_epoch(1)
    assert [r["input_ids"] for r in other_seed] != epoch1
    ds.set_epoch(0)
    assert [r["input_ids"] for r in ds] != epoch1  # each epoch is augmented afresh


def test_template_variety_needs_the_builtin_format(tiny_tokenizer) -> None:
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    record = Record("prompt_completion", Origin("t", 1), prompt="p", completion="c")
    with pytest.raises(UserError, match="template_variety"):
        SFTDataset([record], tok, max_length=64, augment=AugmentSettings(template_variety=True))
