"""Diversity metrics on hand-computed cases, Self-BLEU against sacrebleu, and the bootstrap."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import sacrebleu
import torch

from sftlab.audit import diversity as dv
from sftlab.audit.stats import paired_bootstrap_ci

SEQS = ["a b a b".split(), "a c".split()]


def test_distinct_n_hand_computed() -> None:
    # unigrams a b a b a c: 3 distinct of 6; bigrams ab ba ab ac: 3 of 4; trigrams aba bab: 2 of 2.
    assert dv.distinct_n(SEQS, 1) == pytest.approx(3 / 6)
    assert dv.distinct_n(SEQS, 2) == pytest.approx(3 / 4)
    assert dv.distinct_n(SEQS, 3) == pytest.approx(1.0)
    # n-grams never cross sequences: "b a" + "a c" joined would add the 4-gram (b, a, c...) - there is one 4-gram.
    assert dv.ngram_counts(SEQS, 4) == (1, 1)
    assert dv.distinct_n([["x"]], 2) == 0.0


def test_ead_hand_computed() -> None:
    # V = 10, C = 6 unigrams, 3 distinct: expected distinct = 10 * (1 - 0.9**6) = 10 * 0.468559.
    assert dv.ead(SEQS, 1, vocab_size=10) == pytest.approx(3 / 4.68559, rel=1e-12)
    # Bigrams: C = 4, 3 distinct: 10 * (1 - 0.9**4) = 3.439.
    assert dv.ead(SEQS, 2, vocab_size=10) == pytest.approx(3 / 3.439, rel=1e-12)
    # With a huge vocabulary, C uniform draws are all distinct in expectation: EAD tends to distinct-n.
    assert dv.ead(SEQS, 1, vocab_size=10**9) == pytest.approx(dv.distinct_n(SEQS, 1), rel=1e-6)
    assert dv.mean_ead(SEQS, 10, orders=(1, 2)) == pytest.approx((3 / 4.68559 + 3 / 3.439) / 2)


def test_compression_ratio_hand_computed() -> None:
    texts = ["ab", "cd"]
    raw = b"ab\ncd"  # joined with a newline: 5 bytes
    # gzip = 10-byte header + raw deflate stream + 8-byte trailer (CRC32, size), computed here via zlib.
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = packer.compress(raw) + packer.flush()
    assert dv.compression_ratio(texts) == pytest.approx(5 / (10 + len(deflated) + 8))
    repetitive = ["the cat sat on the mat"] * 20
    varied = [f"sample {i} says {i * 7919 % 1000} things about {i ** 3}" for i in range(20)]
    assert dv.compression_ratio(repetitive) > dv.compression_ratio(varied)
    assert math.isnan(dv.compression_ratio([]))


def _direct_self_bleu(texts: list[str]) -> float:
    """The definition written out with sacrebleu: BLEU of each text against all the others as references."""
    scores = []
    for i, hyp in enumerate(texts):
        refs = [t for j, t in enumerate(texts) if j != i]
        scores.append(sacrebleu.sentence_bleu(hyp, refs).score)
    return sum(scores) / len(scores)


def _gem_style_self_bleu(texts: list[str]) -> float:
    """GEM's evaluation script: all references in ONE stream, so sacrebleu pairs each hypothesis with refs[0] only."""
    scores = []
    for i, hyp in enumerate(texts):
        refs = [t for j, t in enumerate(texts) if j != i]
        scores.append(sacrebleu.corpus_bleu([hyp], [refs]).score)
    return sum(scores) / len(scores)


def test_self_bleu_equals_definition_and_differs_from_gem_misuse() -> None:
    texts = [
        "the quick brown fox jumps over the lazy dog",
        "a completely different sentence about the weather today",
        "the quick brown fox jumps over the lazy dog",
        "yet another line with its own words entirely",
    ]
    ours = dv.self_bleu(texts)
    assert ours == pytest.approx(_direct_self_bleu(texts), abs=1e-9)
    # Text 2 duplicates text 0: with separate streams each finds its twin (BLEU 100); the misuse compares
    # text 0 only with text 1 and text 2 only with text 0 - so it sees one of the two duplicates.
    assert dv.self_bleu_items(texts)[0] == pytest.approx(100.0)
    gem = _gem_style_self_bleu(texts)
    assert abs(ours - gem) > 10
    assert dv.self_bleu(["same words here"] * 3) == pytest.approx(100.0)
    assert math.isnan(dv.self_bleu(["only one"]))


def test_embedding_diversity() -> None:
    assert dv.embedding_diversity(np.eye(3)) == pytest.approx(1.0)
    assert dv.embedding_diversity(np.ones((4, 5))) == pytest.approx(0.0)
    # Two at 60 degrees: cosine 0.5, diversity 0.5.
    e = np.array([[1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    assert dv.embedding_diversity(e) == pytest.approx(0.5)


def test_paired_bootstrap() -> None:
    base = [0.1, 0.5, 0.3, 0.9, 0.2]
    shifted = [b + 0.25 for b in base]
    d, lo, hi = paired_bootstrap_ci(base, shifted, n_boot=500, seed=1)
    # A constant paired difference has no spread at all.
    assert (d, lo, hi) == pytest.approx((0.25, 0.25, 0.25))
    rng = np.random.default_rng(0)
    noisy = [b + 0.25 + rng.normal(0, 0.2) for b in base * 8]
    d, lo, hi = paired_bootstrap_ci(base * 8, noisy, n_boot=1000, seed=1)
    assert lo < d < hi
    assert paired_bootstrap_ci(base * 8, noisy, 1000, 1) == (d, lo, hi)  # seeded
    d, lo, hi = paired_bootstrap_ci([1.0, float("nan")], [2.0, 5.0])  # NaN pairs dropped
    assert d == pytest.approx(1.0)


def test_diversity_table_deltas() -> None:
    base = dv.ModelOutputs(
        texts=[["one two three", "four five six"], ["red green", "blue yellow"]],
        tokens=[[[1, 2, 3], [4, 5, 6]], [[7, 8], [9, 10]]],
    )
    collapsed = dv.ModelOutputs(
        texts=[["one two three", "one two three"], ["red green", "red green"]],
        tokens=[[[1, 2, 3], [1, 2, 3]], [[7, 8], [7, 8]]],
    )
    scores = {"base": dv.score_outputs(base, 100), "tuned": dv.score_outputs(collapsed, 100)}
    assert scores["base"].per_input["distinct_1"] == [1.0, 1.0]
    assert scores["tuned"].per_input["distinct_1"] == [0.5, 0.5]
    table = dv.diversity_table(scores, "base", n_boot=200)
    d = table["deltas"]["tuned"]["per_input"]
    assert d["distinct_1"]["delta"] == pytest.approx(-0.5)
    assert d["self_bleu"]["delta"] > 0  # duplicates: Self-BLEU up
    assert table["higher_is_diverse"]["self_bleu"] is False
    same = dv.diversity_table({"base": scores["base"], "copy": scores["base"]}, "base", n_boot=200)
    assert all(v["delta"] == 0 for v in same["deltas"]["copy"]["per_input"].values())


def test_embedder_on_a_local_encoder(tmp_path, tiny_tokenizer) -> None:
    from transformers import BertConfig, BertModel

    from sftlab.audit.embed import Embedder
    from sftlab.errors import UserError

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, pad_token_id=tiny_tokenizer.pad_token_id)
    BertModel(cfg).save_pretrained(str(tmp_path / "enc"))
    tiny_tokenizer.save_pretrained(str(tmp_path / "enc"))
    embedder = Embedder(str(tmp_path / "enc"))
    emb = embedder.embed(["the same words", "the same words", "something else entirely, and longer"])
    assert emb.shape == (3, 32)
    assert dv.embedding_diversity(emb[:2]) == pytest.approx(0.0, abs=1e-6)
    assert dv.embedding_diversity(emb) > 0
    # Mean pooling skips padding: a text embedded alone equals the same text padded in a batch.
    np.testing.assert_allclose(embedder.embed(["the same words"])[0], emb[0], atol=1e-5)
    # The next audit of a sweep loads the encoder again: texts embedded before come from the process memo.
    again = Embedder(str(tmp_path / "enc"))
    again._embed = lambda *a, **k: pytest.fail("embedded twice")  # type: ignore[method-assign]
    np.testing.assert_array_equal(again.embed(["the same words", "the same words",
                                               "something else entirely, and longer"]), emb)
    with pytest.raises(UserError, match="local model dir"):
        Embedder(str(tmp_path / "missing"))
