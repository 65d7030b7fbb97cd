"""Forgetting scores at the model's limits: a multiple-choice item longer than the model's positions loses
the start of its context (counted), and perplexity needs no pad or EOS token."""

from __future__ import annotations

import copy

import pytest
import torch

from sftlab.audit import forgetting as fg
from sftlab.errors import UserError
from sftlab.models.load import load_model


def _logprob_of(model, ctx: list[int], cont: list[int]) -> float:
    """sum log p(cont_t | ctx, cont_<t), by one unbatched forward."""
    ids = ctx + cont
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    return sum(float(logp[len(ctx) + j - 1, tok]) for j, tok in enumerate(cont))


def test_a_long_item_loses_the_start_of_its_context_and_is_counted(tiny_model_dir, tiny_tokenizer) -> None:
    model = load_model(str(tiny_model_dir))  # GPT-2: 256 learned positions, an IndexError past them
    tok = tiny_tokenizer
    long_context = "The king spoke at length to the court about the weather. " * 40 + "The sky is"
    items = [fg.MCItem("q", ["blue", "green grass"], 0, context=long_context),
             fg.MCItem("q", ["blue", "green grass"], 0, context="The sky is")]
    ctx = tok(long_context, add_special_tokens=False)["input_ids"]
    assert len(ctx) > 256
    with pytest.raises(IndexError):  # what scoring without the limit did
        fg.choice_scores(model, tok, items[:1], batch_size=2)
    scores = fg.choice_scores(model, tok, items, batch_size=3, max_length=256)
    for choice, got in zip(items[0].choices, scores[0]):
        cont = tok(long_context + " " + choice, add_special_tokens=False)["input_ids"][len(ctx):]
        kept = ctx[len(ctx) + len(cont) - 256:]  # lm-eval's left truncation: the last 256 - len(cont) tokens
        assert got.context_cut == len(ctx) - len(kept) > 0
        assert got.logprob == pytest.approx(_logprob_of(model, kept, cont), rel=1e-5)
    assert [s.context_cut for s in scores[1]] == [0, 0]
    assert fg.mc_truncated(scores) == 1
    table = fg.forgetting_table({}, {"b": {"base": [True, True], "t": [True, False]}}, "base", n_boot=100,
                                mc_truncated={"b": {"base": 1, "t": 1}})
    assert table["multiple_choice"]["b"]["t"]["truncated"] == 1


def test_a_choice_that_fills_every_position_is_a_user_error(tiny_model_dir, tiny_tokenizer) -> None:
    model = load_model(str(tiny_model_dir))
    items = [fg.MCItem("q", ["blue", "word " * 300], 0, context="The sky is")]
    with pytest.raises(UserError, match="choice 'word word.* of question 1 is \\d+ tokens.*at most 256 positions"):
        fg.choice_scores(model, tiny_tokenizer, items, max_length=256)


def test_perplexity_needs_neither_pad_nor_eos(tiny_model_dir, tiny_tokenizer) -> None:
    model = load_model(str(tiny_model_dir))
    bare = copy.deepcopy(tiny_tokenizer)
    bare.pad_token = None
    bare.eos_token = None
    assert bare.pad_token_id is None and bare.eos_token_id is None
    texts = ["To be, or not to be.", "A longer sentence about the quick brown fox and the lazy dog."]
    got = fg.perplexity(model, bare, texts, max_length=128, batch_size=2)  # was a TypeError
    assert got.value == pytest.approx(fg.perplexity(model, tiny_tokenizer, texts, max_length=128, batch_size=2).value,
                                      rel=1e-6)
