"""The forgetting forecast: per-token KL against hand-computed cases, the audit section, and the sweep's check."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from sftlab.audit.forecast import AnswerKL, score_forecast, scored_continuation, summarize_forecast, token_kl
from sftlab.audit.stats import bootstrap_ratio_ci
from sftlab.config import AuditConfig, build_config
from sftlab.recipes.audit import forecast_samples_per_prompt, run_audit
from sftlab.recipes.audit_inputs import read_sft_prompts
from sftlab.recipes.sweep import aggregate, row_from_report
from sftlab.recipes.sweep_forecast import forecast_correlations, forecast_section, spearman, verdict

from conftest import make_tiny_model_dir


def _logits(*probs: list[float]) -> torch.Tensor:
    return torch.log(torch.tensor(probs, dtype=torch.float64))


def test_token_kl_by_hand() -> None:
    base = _logits([0.5, 0.5], [0.25, 0.75])
    tuned = _logits([0.9, 0.1], [0.25, 0.75])
    forward, reverse = token_kl(base, tuned)
    # KL(base || tuned) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1); KL(tuned || base) = 0.9 ln(0.9/0.5) + 0.1 ln(0.1/0.5).
    assert forward[0].item() == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(5.0), abs=1e-6)
    assert reverse[0].item() == pytest.approx(0.9 * math.log(1.8) + 0.1 * math.log(0.2), abs=1e-6)
    assert forward[0].item() == pytest.approx(0.5108256, abs=1e-6) and reverse[0].item() == pytest.approx(0.3680642, abs=1e-6)
    assert forward[1].item() == pytest.approx(0.0, abs=1e-7) and reverse[1].item() == pytest.approx(0.0, abs=1e-7)
    # The two directions differ: the forecast must not silently swap them.
    assert forward[0].item() > reverse[0].item() + 0.1


def test_token_kl_where_the_base_gives_a_token_no_mass() -> None:
    # p_base = (1, 0): only the first token counts, KL(base || tuned) = ln(1 / 0.5); never 0 * -inf = nan.
    base = torch.tensor([[0.0, -math.inf]])
    tuned = _logits([0.5, 0.5]).float()
    forward, reverse = token_kl(base, tuned)
    assert forward.item() == pytest.approx(math.log(2.0), abs=1e-6)
    assert math.isinf(reverse.item())  # the tuned model puts mass where the base has none


def test_token_kl_is_zero_when_tuned_is_base() -> None:
    logits = torch.randn(7, 31, generator=torch.Generator().manual_seed(0))
    forward, reverse = token_kl(logits, logits.clone())
    assert torch.allclose(forward, torch.zeros(7), atol=1e-6) and torch.allclose(reverse, torch.zeros(7), atol=1e-6)


def test_scored_continuation_adds_the_stopping_position_only_when_the_answer_stopped() -> None:
    assert scored_continuation([5, 6], max_new_tokens=4, placeholder=0) == [5, 6, 0]
    assert scored_continuation([5, 6, 7, 8], max_new_tokens=4, placeholder=0) == [5, 6, 7, 8]
    assert scored_continuation([], max_new_tokens=4, placeholder=9) == [9]


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_gpt2_seed1"), tiny_tokenizer, seed=1)


def test_batched_scores_match_one_prefix_at_a_time(tiny_model_dir, other_model_dir, tiny_tokenizer) -> None:
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    tuned = AutoModelForCausalLM.from_pretrained(str(other_model_dir)).eval()
    contexts = [[5, 17, 40], [8], [100, 101]]
    base_contexts = [[7, 7], [8], [3, 100, 101]]  # a base-side prompt of its own, as shift_template=plain gives
    conts = [[11, 12, 13, 0], [], [300, 301]]
    scores = score_forecast(tuned, base, contexts, base_contexts, conts, tiny_tokenizer.pad_token_id, batch_size=2)
    assert [len(s.forward) for s in scores] == [4, 0, 2]
    with torch.no_grad():
        for ctx, b_ctx, cont, score in zip(contexts, base_contexts, conts, scores):
            for j in range(len(cont)):
                t_last = tuned(input_ids=torch.tensor([ctx + cont[:j]])).logits[:, -1]
                b_last = base(input_ids=torch.tensor([b_ctx + cont[:j]])).logits[:, -1]
                fwd, rev = token_kl(b_last, t_last)
                assert score.forward[j] == pytest.approx(fwd.item(), rel=1e-4, abs=1e-6)
                assert score.reverse[j] == pytest.approx(rev.item(), rel=1e-4, abs=1e-6)
    assert all(s.forward.min() > 0 for s in scores if len(s.forward))  # two different random models
    same = score_forecast(base, base, contexts, contexts, conts, tiny_tokenizer.pad_token_id)
    assert all(np.allclose(s.forward, 0, atol=1e-6) and np.allclose(s.reverse, 0, atol=1e-6) for s in same)


def test_summary_pools_tokens_and_bootstraps_prompts() -> None:
    per_prompt = [[AnswerKL(np.array([1.0, 3.0]), np.array([0.5, 0.5])), AnswerKL(np.array([2.0]), np.array([1.0]))],
                  [AnswerKL(np.array([0.5]), np.array([0.0]))]]
    s = summarize_forecast(per_prompt, n_boot=200)
    assert (s["n_prompts"], s["n_answers"], s["n_positions"]) == (2, 3, 4)
    assert s["forward"]["mean"] == pytest.approx((1 + 3 + 2 + 0.5) / 4)
    assert s["reverse"]["mean"] == pytest.approx(2.0 / 4)
    # Resampling whole prompts: a replicate is prompt 0 alone (6/3 = 2), prompt 1 alone (0.5) or a mix.
    assert 0.5 <= s["forward"]["ci_low"] <= s["forward"]["mean"] <= s["forward"]["ci_high"] <= 2.0


def test_one_distinct_prompt_bootstraps_its_answers() -> None:
    # An SFT set with one instruction: resampling its single prompt would give a zero-width interval.
    per_prompt = [[AnswerKL(np.array([1.0, 3.0]), np.array([1.0, 1.0])), AnswerKL(np.array([0.5]), np.array([0.0]))]]
    s = summarize_forecast(per_prompt, n_boot=200)
    assert s["resampled"] == "answers" and s["forward"]["mean"] == pytest.approx(4.5 / 3)
    # A replicate is answer 0 alone (4/2 = 2), answer 1 alone (0.5) or a mix: the interval has width.
    assert 0.5 <= s["forward"]["ci_low"] < s["forward"]["ci_high"] <= 2.0


def test_bootstrap_ratio_ci_by_hand() -> None:
    assert bootstrap_ratio_ci([6.0, 1.0], [3.0, 2.0], n_boot=100)[0] == pytest.approx(7.0 / 5.0)
    assert bootstrap_ratio_ci([4.0, 9.0], [2.0, 0.0]) == (2.0, 2.0, 2.0)  # the empty item is dropped
    assert all(math.isnan(v) for v in bootstrap_ratio_ci([1.0], [0.0]))
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap_ratio_ci([1.0, 2.0], [1.0])


def test_sft_prompts_are_distinct_sampled_and_in_file_order(tmp_path) -> None:
    path = tmp_path / "sft.jsonl"
    rows = [{"prompt": "Write a review.", "completion": f"review {i}"} for i in range(5)]
    rows += [{"prompt": f"Review film {i}.", "completion": "ok"} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = read_sft_prompts(str(path), limit=100, seed=0)
    texts = [[m.content for m in p] for p in prompts]
    assert texts == [["Write a review."]] + [[f"Review film {i}."] for i in range(6)]
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "A poem?"}, {"role": "assistant", "content": "Roses"}]}) + "\n")
    # A conversation's prompt is every turn before its last answer.
    assert [[m.content for m in p] for p in read_sft_prompts(str(chat), 10, 0)] == [["Hi", "Hello", "A poem?"]]
    some = read_sft_prompts(str(path), limit=3, seed=0)
    assert len(some) == 3 and len({tuple(m.content for m in p) for p in some}) == 3
    order = [prompts.index(p) for p in some]
    assert order == sorted(order)
    assert some == read_sft_prompts(str(path), limit=3, seed=0)


def test_audit_forecast_is_zero_for_the_base_itself_and_positive_for_a_changed_model(
        tmp_path, tiny_model_dir, other_model_dir, shared_data) -> None:
    alpaca = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": r["instruction"]}) + "\n" for r in alpaca[:3]))
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps({"prompt": r["instruction"], "completion": r["output"]}) + "\n"
                                               for r in alpaca[10:30]))
    same = shutil.copytree(tiny_model_dir, tmp_path / "same")
    cfg = build_config(AuditConfig, {
        "base": str(tiny_model_dir), "tuned": [str(same), str(other_model_dir)], "prompts": str(tmp_path / "prompts.jsonl"),
        "sft_data": str(tmp_path / "sft.jsonl"), "out": str(tmp_path / "out"), "forecast_prompts": 6,
        "forecast_samples": 2, "forecast_min_answers": 12, "sampling": {"num_samples": 2, "max_new_tokens": 6},
        "bootstrap_samples": 100})
    run_audit(cfg)
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    fc = doc["sections"]["forecast"]
    assert fc["prompts"] == 6 and fc["samples_per_prompt"] == 2 and set(fc["models"]) == {"same", _name(other_model_dir)}
    same_fc, other_fc = fc["models"]["same"], fc["models"][_name(other_model_dir)]
    assert same_fc["n_prompts"] == 6 and same_fc["n_answers"] == 12 and same_fc["n_positions"] >= 12
    assert same_fc["forward"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert same_fc["reverse"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert other_fc["forward"]["mean"] > 0.01 and other_fc["reverse"]["mean"] > 0.01
    assert other_fc["forward"]["ci_low"] <= other_fc["forward"]["mean"] <= other_fc["forward"]["ci_high"]
    assert "## Forgetting forecast" in (tmp_path / "out" / "report.md").read_text()
    assert 'id="forecast"' in (tmp_path / "out" / "report.html").read_text()
    assert row_from_report(doc, "same")["forecast_kl"] == pytest.approx(0.0, abs=1e-6)

    off = cfg.model_copy(update={"forecast_prompts": 0, "out": str(tmp_path / "off")})
    run_audit(off)
    assert "forecast" not in json.loads((tmp_path / "off" / "report.json").read_text())["sections"]


def test_few_distinct_sft_prompts_get_more_samples_each(tmp_path) -> None:
    cfg = build_config(AuditConfig, {"base": "b", "tuned": ["t"], "prompts": "p.jsonl", "out": str(tmp_path),
                                     "forecast_samples": 2, "forecast_min_answers": 16})
    # One instruction (the real demo's SFT set): 16 samples of it; 6 prompts: 3 each; 64 prompts: forecast_samples.
    assert [forecast_samples_per_prompt(cfg, n) for n in (1, 6, 8, 64)] == [16, 3, 2, 2]


def _name(path: Path) -> str:
    return Path(path).name


# --------------------------------------------------------------------------------------------------
# The sweep's check of the forecast


def _table(forecast: list[float], **measures: list[float | None]) -> dict:
    rows = [{"strategy": f"s{i}", "seed": 0, "forecast_kl": f, **{k: v[i] for k, v in measures.items()}}
            for i, f in enumerate(forecast)]
    return aggregate(rows, list(dict.fromkeys(r["strategy"] for r in rows)))


def test_spearman_by_hand() -> None:
    # Ranks (1,2,3,4,5) vs (2,1,4,3,5): sum d^2 = 4, rho = 1 - 6*4 / (5*(25-1)) = 0.8.
    rho, p = spearman([0.1, 0.2, 0.3, 0.4, 0.5], [2.0, 1.0, 4.0, 3.0, 5.0])
    assert rho == pytest.approx(0.8)
    # Exact: 16 of the 120 orders of five ranks have |rho| >= 0.8.
    assert p == pytest.approx(16 / 120)
    # Ties take their average rank: x ranks (1, 2.5, 2.5, 4), y ranks (1, 2, 3, 4) -> Pearson of ranks.
    rho_t, _ = spearman([1.0, 2.0, 2.0, 3.0], [10.0, 20.0, 30.0, 40.0])
    assert rho_t == pytest.approx(4.5 / math.sqrt(4.5 * 5.0))
    assert all(math.isnan(v) for v in spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


def test_forecast_correlations_from_hand_made_rows() -> None:
    table = _table([0.1, 0.2, 0.3, 0.4, 0.5],
                   forecast_kl_reverse=[0.5, 0.4, 0.3, 0.2, 0.1],  # the other direction, here ranked the other way
                   delta_perplexity=[2.0, 1.0, 4.0, 3.0, 5.0],  # rises with the forecast: rho = +0.8
                   delta_benchmark=[-0.01, -0.02, -0.03, -0.04, -0.05],  # falls with it: rho = -1, the right way
                   delta_heldout_task=[None, 0.1, 0.2, 0.3, 0.4])  # rises: backwards, on the 4 strategies that have it
    data = forecast_correlations(table)
    by_key = {m["key"]: m for m in data["measures"]}
    ppl, bench, held = by_key["delta_perplexity"], by_key["delta_benchmark"], by_key["delta_heldout_task"]
    assert (ppl["rho"], ppl["n"], ppl["agreement"]) == (pytest.approx(0.8), 5, pytest.approx(0.8))
    assert ppl["rho_reverse"] == pytest.approx(-0.8) and held["rho_reverse"] == pytest.approx(-1.0)
    assert ppl["verdict"].startswith("the forecast ranked forgetting well") and ppl["verdict"].endswith("within chance (p > 0.05)")
    assert bench["rho"] == pytest.approx(-1.0) and bench["agreement"] == pytest.approx(1.0)
    assert bench["p_value"] == pytest.approx(2 / 120) and bench["verdict"] == "the forecast ranked forgetting well"
    assert held["n"] == 4 and held["strategies"] == ["s1", "s2", "s3", "s4"] and held["rho"] == pytest.approx(1.0)
    assert held["verdict"].startswith("the forecast ranked forgetting backwards")

    section = forecast_section(table)
    assert section is not None
    assert "Δ perplexity (reference text): ρ = +0.80 over n = 5 strategies, p = 0.13" in section.markdown
    assert "(reverse KL: ρ = -0.80)" in section.markdown
    assert "ρ = -1.00 over n = 5 strategies, p = 0.02: the forecast ranked forgetting well" in section.markdown


def test_verdicts_say_when_the_sweep_cannot_judge() -> None:
    two = forecast_correlations(_table([0.1, 0.2], delta_perplexity=[1.0, 2.0]))["measures"][0]
    assert two["n"] == 2 and two["verdict"].startswith("too few strategies to judge (n = 2")
    flat = forecast_correlations(_table([0.1, 0.2, 0.3], delta_perplexity=[1.0, 1.0, 1.0]))["measures"][0]
    assert flat["verdict"].startswith("ρ is undefined")
    assert forecast_section(_table([0.1, 0.2, 0.3], delta_perplexity=[1.0, 1.0, 1.0])).markdown.count(
        "Δ perplexity (reference text), n = 3 strategies: ρ is undefined") == 1
    assert verdict(0.1, 0.8, 6).startswith("the forecast did not rank forgetting")
    assert verdict(0.5, 0.01, 9) == "the forecast ranked forgetting only roughly"
    assert forecast_section(_table([0.1, 0.2], delta_benchmark=[None, None])) is None
    no_forecast = aggregate([{"strategy": "a", "seed": 0, "delta_perplexity": 1.0}], ["a"])
    assert forecast_section(no_forecast) is None


def test_world_heldout_task_is_adherence_on_the_genres_the_sft_set_did_not_teach(tmp_path) -> None:
    import random

    from sftlab.audit.measures.context import AuditContext
    from sftlab.data.records import Message
    from sftlab.world.generator import WorldSizes, generate_world
    from sftlab.world.genres import GENRES
    from sftlab.world.grammar import sample_document
    from sftlab.audit.measures.world import world_section

    world = tmp_path / "world"
    generate_world(world, seed=1, sizes=WorldSizes(corpus_docs=200, heldout_per_genre=2, known_people=8, new_people=2,
                                                   sft_train=8, sft_eval=8))
    rows = [json.loads(line) for line in (world / "prompts/genre.jsonl").read_text().splitlines()]
    review = next(r for r in rows if r["genre"] == "movie_review")
    others = [r for r in rows if r["genre"] not in ("movie_review", "biography")][:3]
    rng = random.Random(0)

    def docs(genre: str) -> list[str]:
        return [sample_document(GENRES[genre], rng).text for _ in range(4)]

    prompts = [review, *others]
    base = [docs(r["genre"]) for r in prompts]  # every request answered in its genre
    tuned = [docs("movie_review") for _ in prompts]  # the collapse: reviews for everything
    cfg = AuditConfig(base="b", tuned=["t"], prompts=str(world / "prompts/genre.jsonl"),
                      sft_data=str(world / "sft/narrow/train.jsonl"))
    ctx = AuditContext(cfg, tmp_path, "base", {"base": "b", "tuned": "t"}, [[Message("user", r["prompt"])] for r in prompts],
                       {"base": base, "tuned": tuned}, {"base": [s[0] for s in base], "tuned": [s[0] for s in tuned]})
    section = world_section(world, n_boot=200)(ctx)
    models = section.data["models"]
    assert models["base"]["task"] == models["tuned"]["task"] == 1.0  # the taught genre is kept...
    assert models["base"]["heldout"] == 1.0 and models["tuned"]["heldout"] == 0.0  # ...the others are lost
    assert section.data["deltas"]["tuned"]["heldout"]["delta"] == pytest.approx(-1.0)
    report = {"base": "base", "sections": {
        "world": json.loads(json.dumps(section.data)), "shift": {"models": {"tuned": {"class_fraction": {"shifted": 0.1}}}},
        "diversity": {"models": {m: {"per_input": {"ead": {"mean": 1.0}}, "across_input": {"ead": 1.0}}
                                 for m in ("base", "tuned")}}}}
    assert row_from_report(report, "tuned")["delta_heldout_task"] == pytest.approx(-1.0)


def test_strategies_are_ranked_by_their_mean_over_seeds() -> None:
    # Strategy a: seeds at forecast 0.1 and 0.5 (mean 0.3); b at 0.2; c at 0.4. Δ perplexity means: a 3, b 1, c 5.
    rows = [{"strategy": "a", "seed": 0, "forecast_kl": 0.1, "delta_perplexity": 2.0},
            {"strategy": "a", "seed": 1, "forecast_kl": 0.5, "delta_perplexity": 4.0},
            {"strategy": "b", "seed": 0, "forecast_kl": 0.2, "delta_perplexity": 1.0},
            {"strategy": "c", "seed": 0, "forecast_kl": 0.4, "delta_perplexity": 5.0}]
    (ppl,) = forecast_correlations(aggregate(rows, ["a", "b", "c"]))["measures"]
    assert ppl["n"] == 3 and ppl["strategies"] == ["a", "b", "c"] and ppl["rho"] == pytest.approx(1.0)
    assert math.isnan(ppl["rho_reverse"])  # no reverse KL recorded
