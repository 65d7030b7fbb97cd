"""Pattern copying: retrieval and the copied-token rule on hand-made cases."""

from __future__ import annotations

import pytest

from sftlab.audit.copying import SFTExample, SFTIndex, copying_table, count_copied, pooled_fraction


def test_count_copied_rule() -> None:
    c = count_copied(["certainly", "!", "", "paris", "is"], [True, True, True, True, False],
                     neighbour_pieces={"certainly", "!", "paris"}, prompt_pieces={"paris"}, neighbours=[0])
    # "" is skipped, "is" is not considered, "paris" is in the prompt: copied = certainly, !
    assert c.copied == ["certainly", "!"]
    assert c.considered == 3
    assert pooled_fraction([c]) == pytest.approx(2 / 3)


def test_bm25_retrieves_the_matching_example() -> None:
    index = SFTIndex([
        SFTExample("Give a recipe", "Mix flour, eggs and sugar, then bake.", "sft.jsonl:1"),
        SFTExample("Weather?", "Sunny with light winds from the west.", "sft.jsonl:2"),
        SFTExample("Sports", "The home team won the final match.", "sft.jsonl:3"),
    ])
    assert index.nearest("tomorrow sunny and light winds", 1) == [1]
    assert index.nearest("bake the flour", 2)[0] == 0


def test_copying_table_tuned_vs_base(tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    index = SFTIndex([SFTExample("Say hi", "Certainly! Greetings, traveller.", "sft.jsonl:7"),
                      SFTExample("Count", "one two three", "sft.jsonl:8")])
    prompt = "Say hi to the traveller"
    tuned_text = "Certainly! Greetings"
    tuned_ids = tok(tuned_text, add_special_tokens=False)["input_ids"]
    base_text = "hi there"
    base_ids = tok(base_text, add_special_tokens=False)["input_ids"]
    table = copying_table(index, tok, [prompt], [(base_text, base_ids)],
                          {"tuned": [(tuned_text, tuned_ids, [True] * len(tuned_ids))]}, k=1)
    r = table["models"]["tuned"]
    # Every piece of the tuned answer is in example 7's response and none is in the prompt.
    assert r["shifted_copy_rate"] == 1.0
    assert r["worst_cases"][0]["source"]["origin"] == "sft.jsonl:7"
    # The base answer's pieces ("hi", "there") are not in the retrieved response (or are in the prompt).
    assert table["base_copy_rate"] == 0.0
