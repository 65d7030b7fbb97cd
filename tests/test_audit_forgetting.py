"""Perplexity against a hand computation, multiple-choice scoring and its input checks."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from sftlab.audit import forgetting as fg
from sftlab.errors import UserError
from sftlab.models.load import load_model

TEXTS = ["To be, or not to be, that is the question.", "The quick brown fox.", "A"]


def _hand_nll(model, ids: list[int]) -> tuple[float, int]:
    """Sum of -log p(token_t | tokens_<t) by one unbatched forward, and the number of predicted tokens."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    return -sum(float(logp[t - 1, ids[t]]) for t in range(1, len(ids))), len(ids) - 1


def test_perplexity_is_exp_of_mean_hand_nll(tiny_model_dir, tiny_tokenizer) -> None:
    model = load_model(str(tiny_model_dir))
    tok = tiny_tokenizer
    total, count = 0.0, 0
    for text in TEXTS:
        nll, n = _hand_nll(model, [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"])
        total, count = total + nll, count + n
    got = fg.perplexity(model, tok, TEXTS, max_length=128, batch_size=2)
    assert got.n_tokens == count
    assert got.value == pytest.approx(math.exp(total / count), rel=1e-5)
    # Per document too (the bootstrap over documents reads these), in the input order.
    for text, nll, n in zip(TEXTS, got.doc_nll, got.doc_tokens):
        hand_nll, hand_n = _hand_nll(model, [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"])
        assert (nll, n) == (pytest.approx(hand_nll, rel=1e-5), hand_n)


def test_perplexity_change_interval_over_documents() -> None:
    base = fg.Perplexity(6.0, 3, doc_nll=[2.0, 4.0], doc_tokens=[1, 2])
    # Every document loses exactly 1 nat per token: each resample gives the same change, e - 1.
    same = fg.Perplexity(9.0, 3, doc_nll=[3.0, 6.0], doc_tokens=[1, 2])
    change, low, high = fg.perplexity_change_ci(base, same, n_boot=200)
    assert change == low == pytest.approx(math.e - 1) and high == pytest.approx(math.e - 1)
    # One document gets worse, one better: the interval spans both documents' own changes, and 0.
    mixed = fg.Perplexity(6.0, 3, doc_nll=[4.0, 2.0], doc_tokens=[1, 2])
    change, low, high = fg.perplexity_change_ci(base, mixed, n_boot=2000)
    assert change == pytest.approx(0.0)
    assert low == pytest.approx(math.exp(-1) - 1, abs=1e-9) and high == pytest.approx(math.exp(2) - 1, abs=1e-9)
    # No per-document numbers (an old report's): the change, without an interval.
    assert math.isnan(fg.perplexity_change_ci(fg.Perplexity(6.0, 3), fg.Perplexity(9.0, 3))[1])


def test_windows_predict_every_token_once(tiny_model_dir, tiny_tokenizer) -> None:
    assert fg.windows(list(range(10)), 4) == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert fg.windows([1], 4) == []
    model = load_model(str(tiny_model_dir))
    tok = tiny_tokenizer
    text = " ".join(["word"] * 40)
    ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    got = fg.perplexity(model, tok, [text], max_length=8)
    assert got.n_tokens == len(ids) - 1
    # By hand: the same windows, each scored alone.
    nll = sum(_hand_nll(model, w)[0] for w in fg.windows(ids, 8))
    assert got.nll_sum == pytest.approx(nll, rel=1e-5)


def test_choice_scores_are_mean_token_logprob(tiny_model_dir, tiny_tokenizer) -> None:
    model = load_model(str(tiny_model_dir))
    tok = tiny_tokenizer
    items = [fg.MCItem("What colour is the sky?", ["blue", "a shade of green grass"], 0),
             fg.MCItem("Sky colour", ["blue", "a shade of green grass"], 0, context="The sky is")]
    scores = fg.choice_scores(model, tok, items, batch_size=1)
    # A question gets "\nAnswer:" after it; a context is used verbatim.
    for item, text, per_choice in zip(items, ["What colour is the sky?\nAnswer:", "The sky is"], scores):
        assert fg.mc_context(item) == text
        ctx = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
        for choice, got in zip(item.choices, per_choice):
            cont = tok(" " + choice, add_special_tokens=False)["input_ids"]
            nll_all, _ = _hand_nll(model, ctx + cont)
            nll_ctx, _ = _hand_nll(model, ctx)
            assert got == pytest.approx(-(nll_all - nll_ctx) / len(cont), rel=1e-5)
    assert fg.mc_accuracy(items, [[-1.0, -2.0], [-3.0, -0.5]]) == 0.5


def test_forgetting_table() -> None:
    ppl = {"wiki": {"base": fg.Perplexity(10.0, 5), "tuned": fg.Perplexity(12.0, 5)}}
    table = fg.forgetting_table(ppl, {"mc": {"base": [True, False, False, True], "tuned": [True] * 4}}, "base", 200)
    assert table["perplexity"]["wiki"]["tuned"]["relative_change"] == pytest.approx(math.exp(0.4) - 1)
    assert math.isnan(table["perplexity"]["wiki"]["tuned"]["change_ci_low"])  # no per-document numbers
    row = table["multiple_choice"]["mc"]["tuned"]
    assert row["accuracy"] == 1.0 and row["delta"] == pytest.approx(0.5)
    assert row["ci_low"] <= 0.5 <= row["ci_high"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"question": "q", "choices": ["a", "b"]}', "field 'answer' is missing"),
        ('{"question": "q", "choices": ["a"], "answer": 0}', "field 'choices'"),
        ('{"question": "q", "choices": ["a", "b"], "answer": 2}', "field 'answer' must be the 0-based index"),
        ('{"question": "", "choices": ["a", "b"], "answer": 0}', "field 'question'"),
        ('{"question": "q", "choices": ["a", "b"], "answer": 0, "context": 3}', "field 'context'"),
    ],
)
def test_bad_benchmark_lines_name_file_line_field(tmp_path, line, message) -> None:
    path = tmp_path / "bench.jsonl"
    good = json.dumps({"question": "2+2?", "choices": ["4", "5"], "answer": 0})
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(UserError, match=re.escape(f"{path}:2: {message}")):
        fg.read_multiple_choice(path)
