"""Task metrics against hand-computed values and published reference values."""

from __future__ import annotations

import math

import pytest

from sftlab.audit.task import exact_match, rouge_l, task_scores, task_table


def test_rouge_l_hand_computed() -> None:
    # LCS("the cat sat", "the cat sat on the mat") = 3: P = 3/3, R = 3/6, F = 2PR/(P+R) = 2/3.
    assert rouge_l(["the cat sat"], ["the cat sat on the mat"])[0] == pytest.approx(2 / 3)
    # Stemming: "cats"/"cat" and "running"/"run" match.
    assert rouge_l(["cats running"], ["cat run"])[0] == pytest.approx(1.0)


def test_exact_match_whitespace_only() -> None:
    assert exact_match("  Paris \n", "Paris")
    assert exact_match("New   York", "New York")
    assert not exact_match("paris", "Paris")


def test_bleu_matches_sacrebleus_published_cases() -> None:
    # sacrebleu's own test values (test/test_bleu.py): a hypothesis equal to its reference scores 100, and an
    # empty hypothesis is scored (0), not dropped.
    assert task_scores(["this is a test"], ["this is a test"])["bleu"] == pytest.approx(100.0)
    assert task_scores(["", "", ""], ["The dog bit the man.", "It was not unexpected.", "The man bit him first."])[
        "bleu"] == pytest.approx(0.0)


def test_task_scores_and_table() -> None:
    preds = ["the cat sat on the mat", "a dog", "Paris"]
    refs = ["the cat sat on the mat today", "the dog barked", "Paris"]
    s = task_scores(preds, refs)
    # Corpus BLEU (Papineni et al. 2002) by hand, 13a tokens: 9 hypothesis tokens against 11 reference tokens;
    # clipped n-gram matches 8/9, 5/6, 4/4, 3/3 (no zero count, so smoothing plays no part);
    # BP = exp(1 - 11/9). sacrebleu prints the same: "74.29 88.9/83.3/100.0/100.0 (BP = 0.801 ...)".
    by_hand = 100 * math.exp(1 - 11 / 9) * (8 / 9 * 5 / 6 * 4 / 4 * 3 / 3) ** 0.25
    assert s["bleu"] == pytest.approx(by_hand, abs=1e-6)
    assert s["bleu"] == pytest.approx(74.2859485, abs=1e-6)
    assert s["exact_match"] == pytest.approx(1 / 3)
    assert s["n"] == 3
    table = task_table({"base": ["x", "y", "z"], "tuned": preds}, refs, "base", n_boot=200)
    d = table["deltas"]["tuned"]
    assert d["exact_match"]["delta"] == pytest.approx(1 / 3)
    assert d["bleu"]["delta"] == pytest.approx(s["bleu"] - table["models"]["base"]["bleu"])
    assert d["rouge_l"]["ci_low"] <= d["rouge_l"]["delta"] <= d["rouge_l"]["ci_high"]
    with pytest.raises(ValueError):
        task_scores(["a"], [])
