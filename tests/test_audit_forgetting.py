"""Perplexity against a hand computation, multiple-choice scoring as lm-eval-harness scores it, input checks."""

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


def test_choice_scores_are_lm_eval_log_likelihoods(tiny_model_dir, tiny_tokenizer) -> None:
    model = load_model(str(tiny_model_dir))
    tok = tiny_tokenizer
    items = [fg.MCItem("What colour is the sky?", ["blue", "a shade of green grass"], 0),
             fg.MCItem("Sky colour", ["blue", "a shade of green grass"], 0, context="The sky is")]
    scores = fg.choice_scores(model, tok, items, batch_size=3)  # batches that cut across items
    # A question gets "\nAnswer:" after it; a context is used verbatim. As lm-eval: no BOS, and the
    # choice's ids are what tokenizing context + " " + choice adds after the context's own ids.
    for item, text, per_choice in zip(items, ["What colour is the sky?\nAnswer:", "The sky is"], scores):
        assert fg.mc_context(item) == text
        ctx = tok(text, add_special_tokens=False)["input_ids"]
        for choice, got in zip(item.choices, per_choice):
            whole = tok(text + " " + choice, add_special_tokens=False)["input_ids"]
            assert whole[: len(ctx)] == ctx
            logp = -(_hand_nll(model, whole)[0] - _hand_nll(model, ctx)[0])
            assert got.logprob == pytest.approx(logp, rel=1e-5)
            assert (got.n_tokens, got.n_chars) == (len(whole) - len(ctx), len(choice))
            assert got.value("acc") == got.logprob
            assert got.value("acc_norm") == pytest.approx(logp / len(choice))
            assert got.value("mean_token") == pytest.approx(logp / got.n_tokens)


def test_mc_rules_pick_by_sum_per_character_or_per_token() -> None:
    S = fg.ChoiceScore
    items = [fg.MCItem("q1", ["a", "b"], 0), fg.MCItem("q2", ["a", "b"], 1)]
    # Item 1: choice 0 has the lower sum (-6 < -4) but is long: per character -0.5 against -2, per
    # token -3 against -4. Item 2: choice 1 has the higher sum and per-token score, choice 0 wins per
    # character (-1/5 = -0.2 against -2/8 = -0.25).
    scores = [[S(-6.0, 2, 12), S(-4.0, 1, 2)], [S(-1.0, 1, 5), S(-2.0, 4, 8)]]
    assert fg.mc_predictions(scores, "acc") == [1, 0]
    assert fg.mc_predictions(scores, "acc_norm") == [0, 0]
    assert fg.mc_predictions(scores, "mean_token") == [0, 1]
    assert fg.mc_accuracy(items, scores, "acc") == 0.0
    assert fg.mc_accuracy(items, scores, "acc_norm") == 0.5
    assert fg.mc_correct(items, scores, "mean_token") == [True, True]
    assert fg.mc_predictions([[S(-1.0, 1, 1), S(-1.0, 1, 1)]]) == [0]  # a tie: the first choice, as argmax
    with pytest.raises(ValueError, match="unknown multiple-choice rule"):
        S(-1.0, 1, 1).value("acc_mean")


def test_choice_pairs_are_split_as_lm_eval_splits_them(tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    # A trailing space of the context moves to the continuation, as lm-eval's _encode_pair does.
    (ctx, cont), = fg.encode_choice_pairs(tok, [("Answer: ", "blue")])
    assert ctx == tok("Answer:", add_special_tokens=False)["input_ids"]
    assert ctx + cont == tok("Answer: blue", add_special_tokens=False)["input_ids"]


def test_read_piqa_uses_lm_evals_prompt(shared_data, tmp_path) -> None:
    items = fg.read_piqa(shared_data / "piqa" / "dev.jsonl")
    first = json.loads((shared_data / "piqa" / "dev.jsonl").read_text().splitlines()[0])
    assert len(items) == 900
    assert fg.mc_context(items[0]) == f"Question: {first['goal']}\nAnswer:"
    assert items[0].choices == [first["sol1"], first["sol2"]] and items[0].answer == first["label"]
    assert {it.answer for it in items} == {0, 1}
    # As an audit benchmark, the file is recognised by its keys.
    assert fg.read_multiple_choice(shared_data / "piqa" / "dev.jsonl") == items
    bad = tmp_path / "piqa.jsonl"
    bad.write_text(json.dumps({"goal": "g", "sol1": "a", "sol2": "b", "label": 2}) + "\n")
    with pytest.raises(UserError, match=re.escape(f"{bad}:1: field 'label' must be 0 or 1")):
        fg.read_piqa(bad)


def test_forgetting_table() -> None:
    ppl = {"wiki": {"base": fg.Perplexity(10.0, 5), "tuned": fg.Perplexity(12.0, 5)}}
    table = fg.forgetting_table(ppl, {"mc": {"base": [True, False, False, True], "tuned": [True] * 4}}, "base", 200,
                                mc_score="acc_norm")
    assert table["mc_score"] == "acc_norm"
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
