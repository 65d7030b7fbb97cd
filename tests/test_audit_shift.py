"""Token distribution shift: identity, constructed ranks, and batched scoring against the per-position loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sftlab.audit.shift import (
    MARGINAL,
    SHIFTED,
    UNSHIFTED,
    AnswerShift,
    classify,
    plain_prompt,
    position_scores,
    score_per_position,
    score_shift,
    summarize_shift,
)
from sftlab.data.records import Message
from sftlab.models.load import load_model


def _greedy(model, context: list[int], steps: int) -> list[int]:
    """Greedy continuation by full re-forwards (no cache), so ties are broken exactly as scoring sees them."""
    ids = list(context)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(context):]


def test_position_scores_by_hand_on_a_three_token_vocabulary() -> None:
    """KL(tuned || base), the direction the module states, worked out by hand; the reverse is 0.0851."""
    tuned_p, base_p = torch.tensor([[0.5, 0.3, 0.2]]), torch.tensor([[0.7, 0.2, 0.1]])
    # Logits are log-probabilities plus any constant: softmax must give the same distributions back.
    got = position_scores(tuned_p.log() + 3.0, base_p.log() - 1.0, torch.tensor([1]))
    by_hand = 0.5 * math.log(0.5 / 0.7) + 0.3 * math.log(0.3 / 0.2) + 0.2 * math.log(0.2 / 0.1)
    assert by_hand == pytest.approx(0.0920329, abs=1e-6)
    assert got["kl"].item() == pytest.approx(by_hand, abs=1e-6)
    # token 1: the base ranks it second (0.7 > 0.2), its probabilities are 0.2 (base) and 0.3 (tuned)
    assert got["rank"].item() == 2 and got["base_top"].item() == 0
    assert got["base_prob"].item() == pytest.approx(0.2) and got["tuned_prob"].item() == pytest.approx(0.3)


def test_classify() -> None:
    assert classify(np.array([1, 2, 3, 4, 100])).tolist() == [UNSHIFTED, MARGINAL, MARGINAL, SHIFTED, SHIFTED]


def test_identical_models_are_fully_unshifted(tiny_model_dir, tiny_tokenizer) -> None:
    base = load_model(str(tiny_model_dir))
    tuned = load_model(str(tiny_model_dir))  # a second copy from the same files
    contexts = [tiny_tokenizer("To be or not")["input_ids"], tiny_tokenizer("The king said that")["input_ids"]]
    answers = [_greedy(tuned, c, 12) for c in contexts]
    shifts = score_shift(tuned, base, contexts, contexts, answers, tiny_tokenizer.pad_token_id, batch_size=2)
    summary = summarize_shift(shifts, tiny_tokenizer)
    assert summary["class_fraction"] == {"unshifted": 1.0, "marginal": 0.0, "shifted": 0.0}
    assert summary["n_positions"] == 24
    assert max(float(s.kl.max()) for s in shifts) == 0.0
    assert all(np.allclose(s.base_prob, s.tuned_prob) for s in shifts)


def test_constructed_answer_gives_known_classes(tiny_model_dir, tiny_tokenizer, tmp_path) -> None:
    from conftest import make_tiny_model_dir

    base = load_model(str(tiny_model_dir))
    tuned = load_model(str(make_tiny_model_dir(tmp_path / "other", tiny_tokenizer, seed=7)))
    context = tiny_tokenizer("Once upon a time")["input_ids"]
    wanted_ranks = [1, 2, 3, 4, 10, 1, 57]
    answer: list[int] = []
    with torch.no_grad():
        for r in wanted_ranks:  # pick, at each step, the base's r-th most likely token
            logits = base(input_ids=torch.tensor([context + answer])).logits[0, -1]
            answer.append(int(torch.argsort(logits, descending=True)[r - 1]))
    (s,) = score_shift(tuned, base, [context], [context], [answer], tiny_tokenizer.pad_token_id)
    assert s.ranks.tolist() == wanted_ranks
    assert s.classes.tolist() == [UNSHIFTED, MARGINAL, MARGINAL, SHIFTED, SHIFTED, UNSHIFTED, SHIFTED]
    assert (s.kl > 0).all()
    summary = summarize_shift([s], tiny_tokenizer)
    assert summary["class_fraction"]["shifted"] == pytest.approx(3 / 7)
    assert summary["class_fraction"]["marginal"] == pytest.approx(2 / 7)
    assert sum(t["count"] for t in summary["top_shifted"]) == 3


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_batched_equals_per_position_loop(arch, tiny_model_dir, tiny_llama_dir, tiny_tokenizer, tmp_path) -> None:
    from conftest import make_tiny_model_dir

    base_dir = tiny_model_dir if arch == "gpt2" else tiny_llama_dir
    base = load_model(str(base_dir))
    tuned = load_model(str(make_tiny_model_dir(tmp_path / "t", tiny_tokenizer, architecture=arch, seed=3)))
    tok = tiny_tokenizer
    tuned_ctx = [tok("Write a poem.")["input_ids"], tok("Hi")["input_ids"], tok("Explain how the tides work")["input_ids"]]
    # The base sees a different (plain) context of a different length: padding must not leak into scores.
    base_ctx = [tok(plain_prompt([Message("user", "Write a poem.")]))["input_ids"], tok("Hi there")["input_ids"],
                tok("Tides?")["input_ids"]]
    g = torch.Generator().manual_seed(0)
    answers = [torch.randint(2, len(tok), (n,), generator=g).tolist() for n in (9, 17, 4)]
    batched = score_shift(tuned, base, tuned_ctx, base_ctx, answers, tok.pad_token_id, batch_size=3)
    for tc, bc, ans, got in zip(tuned_ctx, base_ctx, answers, batched):
        ref = score_per_position(tuned, base, tc, bc, ans)
        assert got.token_ids == ans
        assert got.ranks.tolist() == ref.ranks.tolist()
        np.testing.assert_allclose(got.kl, ref.kl, atol=1e-5)
        np.testing.assert_allclose(got.base_prob, ref.base_prob, atol=1e-5)
        np.testing.assert_allclose(got.tuned_prob, ref.tuned_prob, atol=1e-5)
        assert got.base_top.tolist() == ref.base_top.tolist()


def test_summary_by_position_and_top_tokens(tiny_tokenizer) -> None:
    def shift(ids, ranks, kl):
        n = len(ids)
        return AnswerShift(ids, np.array(ranks), np.array(kl, dtype=float), np.full(n, 0.5), np.full(n, 0.5),
                           np.array([7] * n))

    shifts = [shift([10, 11, 12], [1, 5, 2], [0.0, 1.0, 0.5]), shift([11, 13], [9, 1], [2.0, 0.0]), shift([], [], [])]
    s = summarize_shift(shifts, tiny_tokenizer)
    assert s["n_positions"] == 5
    assert s["class_fraction"] == pytest.approx({"unshifted": 0.4, "marginal": 0.2, "shifted": 0.4})
    assert s["by_position"]["count"] == [2, 2, 1]
    assert s["by_position"]["mean_kl"] == pytest.approx([1.0, 0.5, 0.5])
    assert s["by_position"]["shifted"] == pytest.approx([0.5, 0.5, 0.0])
    assert s["top_shifted"][0]["token_id"] == 11 and s["top_shifted"][0]["count"] == 2
    assert s["top_shifted"][0]["base_preferred"] == tiny_tokenizer.decode([7])
