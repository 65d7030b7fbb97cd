"""Task metrics against hand-computed values and a direct sacrebleu call."""

from __future__ import annotations

import pytest
import sacrebleu

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


def test_task_scores_and_table() -> None:
    preds = ["the cat sat on the mat", "a dog", "Paris"]
    refs = ["the cat sat on the mat today", "the dog barked", "Paris"]
    s = task_scores(preds, refs)
    assert s["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert s["exact_match"] == pytest.approx(1 / 3)
    assert s["n"] == 3
    table = task_table({"base": ["x", "y", "z"], "tuned": preds}, refs, "base", n_boot=200)
    d = table["deltas"]["tuned"]
    assert d["exact_match"]["delta"] == pytest.approx(1 / 3)
    assert d["bleu"]["delta"] == pytest.approx(s["bleu"] - table["models"]["base"]["bleu"])
    assert d["rouge_l"]["ci_low"] <= d["rouge_l"]["delta"] <= d["rouge_l"]["ci_high"]
    with pytest.raises(ValueError):
        task_scores(["a"], [])
