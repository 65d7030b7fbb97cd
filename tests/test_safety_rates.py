"""Refusal and over-refusal rates, base against tuned, on hand-computed cases; the shipped prompt sets."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from sftlab.audit.refusal import rules_judge
from sftlab.audit.safety_prompts import (
    SafetyPrompt,
    load_prompt_set,
    proportional_allocation,
    read_split,
    stratified_sample,
)
from sftlab.audit.safety_rates import refusal_rate, safety_rates
from sftlab.errors import UserError

NO = "I'm sorry, but I can't help with that."
YES = "Sure, here is what you asked for."


def prompts(n: int, kind: str) -> list[SafetyPrompt]:
    return [SafetyPrompt(f"{kind}:{i}", f"{kind} prompt {i}", "c") for i in range(n)]


def test_rates_and_change_by_hand() -> None:
    sets = {"harmful": prompts(10, "h"), "benign": prompts(4, "b")}
    base = {"harmful": [NO] * 10, "benign": [YES] * 4}
    tuned = {"harmful": [NO] * 2 + [YES] * 8, "benign": [YES] * 3 + [NO]}
    out = safety_rates(sets, base, {"drifted": tuned}, rules_judge, n_boot=500)
    rows = {(r.model, r.set): r for r in out.rows}
    assert rows[("base", "harmful")].rate == 1.0 and rows[("base", "benign")].rate == 0.0
    harmful = rows[("drifted", "harmful")]
    assert harmful.rate == pytest.approx(0.2) and harmful.delta == pytest.approx(-0.8)
    assert harmful.low <= -0.8 <= harmful.high < 0 and harmful.moved
    benign = rows[("drifted", "benign")]
    assert benign.rate == pytest.approx(0.25) and benign.low <= 0 <= benign.high and not benign.moved
    assert len(out.findings) == 1 and "refuses harmful requests less often" in out.findings[0]
    assert "100% -> 20%" in out.findings[0]
    first = out.examples["drifted"][0]
    # the flips come first: same prompt, base refused, tuned complied
    assert first.set == "harmful" and first.base_refused and not first.tuned_refused
    assert first.base_answer == NO and first.tuned_answer == YES and first.prompt_id == "h:2"


def test_harm_judge_gets_no_benign_rows() -> None:
    def harm_judge(p, a):
        return rules_judge(p, a)

    harm_judge.kind = "harm"  # type: ignore[attr-defined]
    sets = {"harmful": prompts(3, "h"), "benign": prompts(3, "b")}
    out = safety_rates(sets, {"harmful": [NO] * 3, "benign": [NO] * 3},
                       {"t": {"harmful": [YES] * 3, "benign": [NO] * 3}}, harm_judge, n_boot=50)
    assert {r.set for r in out.rows} == {"harmful"}


def test_mismatched_answers_are_a_bug() -> None:
    with pytest.raises(ValueError, match="answers"):
        safety_rates({"harmful": prompts(3, "h")}, {"harmful": [NO] * 2}, {}, rules_judge)


def test_refusal_rate_of_nothing_is_nan() -> None:
    assert refusal_rate([]) != refusal_rate([])
    assert refusal_rate([True, False, False, True]) == 0.5


def test_proportional_allocation_by_hand() -> None:
    # quotas 10 * (50, 30, 15, 5) / 100 = 5, 3, 1.5, 0.5 -> 5, 3, then the .5s: 1 each, and every stratum >= 1
    assert proportional_allocation({"a": 50, "b": 30, "c": 15, "d": 5}, 10) == {"a": 5, "b": 3, "c": 1, "d": 1}


def test_stratified_sample_is_reproducible_and_proportional() -> None:
    pool = [SafetyPrompt(str(i), "p", "big" if i < 80 else "small") for i in range(100)]
    one, two = stratified_sample(pool, 20, seed=3), stratified_sample(pool, 20, seed=3)
    assert one == two and Counter(p.category for p in one) == {"big": 16, "small": 4}
    assert stratified_sample(pool, 20, seed=4) != one


def test_shipped_sets_load_and_the_audit_sample_never_trains() -> None:
    harmful, train, benign = (load_prompt_set(n) for n in ("harmful", "harmful_train", "benign"))
    assert len(harmful) == 200 and len(benign) >= 60
    assert len({p.category for p in benign}) == 7
    split = read_split()
    assert {p.id for p in harmful} == set(split["audit"]) and {p.id for p in train} == set(split["train"])
    assert not {p.id for p in harmful} & {p.id for p in train}
    assert not {p.prompt for p in harmful} & {p.prompt for p in train}
    assert not {p.category for p in train} & set(split["heldout_categories"])
    assert set(split["heldout_categories"]) <= {p.category for p in harmful}


def test_prompts_file_without_prompts_is_a_user_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match="no prompts"):
        load_prompt_set(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"text": "no prompt field"}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl:2, field 'prompt'"):
        load_prompt_set(bad)
    with pytest.raises(UserError, match="built-in"):
        load_prompt_set("harmfull")


def test_settings_pick_the_sets_and_the_stratified_sample() -> None:
    from sftlab.audit.safety_rates import SafetySettings, safety_prompts

    sets = safety_prompts(SafetySettings(harmful_sample=50))
    assert len(sets["harmful"]) == 50 and len(sets["benign"]) == 70
    assert {p.id for p in sets["harmful"]} <= {p.id for p in load_prompt_set("harmful")}
    with pytest.raises(Exception, match="judge"):
        SafetySettings(judgee="rules")  # unknown keys are refused, with the close match
