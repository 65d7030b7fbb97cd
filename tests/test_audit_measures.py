"""The audit's measures registry: discovery of one-file measures, opt-in selection, the sweep's cells and the
gate values, all read from report.json alone."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import sftlab.audit.measures as measures_package
from sftlab.audit.measures import registry
from sftlab.errors import UserError

# A report.json's sections, written by hand: every figure below is checked against these numbers.
REPORT = {
    "base": "b", "models": {"b": "dir/b", "t": "dir/t"},
    "sections": {
        "style": {"capture": {"models": {"t": {"value": 0.75}},
                              "deltas": {"t": {"delta": 0.25, "ci_low": 0.1, "ci_high": 0.4}}},
                  "adherence": {"deltas": {"t": {"delta": -0.05, "ci_low": -0.08, "ci_high": -0.02}}}},
        "diversity": {"higher_is_diverse": {"distinct_2": True, "self_bleu": False},
                      "models": {"b": {"per_input": {"ead": {"mean": 0.8}}, "across_input": {"ead": 0.5}},
                                 "t": {"per_input": {"ead": {"mean": 0.6}}, "across_input": {"ead": 0.25}}},
                      "deltas": {"t": {"per_input": {"distinct_2": {"delta": -0.1, "ci_low": -0.2, "ci_high": 0.0},
                                                     "self_bleu": {"delta": 0.3, "ci_low": None, "ci_high": None}}}}},
        "shift": {"models": {"t": {"class_fraction": {"shifted": 0.125}}}},
        "copying": {"base_copy_rate": 0.1, "models": {"t": {"shifted_copy_rate": 0.3}}},
        "forgetting": {"perplexity": {"wiki": {"b": {"perplexity": 20.0}, "t": {"perplexity": 21.0, "relative_change": 0.05,
                                                                               "change_ci_low": 0.01, "change_ci_high": 0.09}},
                                      "code": {"b": {"perplexity": 10.0}, "t": {"perplexity": 12.0, "relative_change": 0.2,
                                                                               "change_ci_low": None, "change_ci_high": None}}},
                       "multiple_choice": {"piqa": {"b": {"accuracy": 0.6}, "t": {"accuracy": 0.565, "delta": -0.035,
                                                                                 "ci_low": -0.06, "ci_high": -0.01}}},
                       "mc_score": "acc_norm"},
        "forecast": {"models": {"t": {"forward": {"mean": 0.02, "ci_low": 0.01, "ci_high": 0.03},
                                      "reverse": {"mean": 0.04, "ci_low": 0.02, "ci_high": 0.05}}}},
        "task": {"models": {"t": {"rouge_l": 0.4}},
                 "deltas": {"t": {"rouge_l": {"delta": -0.02, "ci_low": -0.05, "ci_high": 0.01},
                                  "exact_match": {"delta": None, "ci_low": None, "ci_high": None},
                                  "bleu": {"delta": 1.5, "ci_low": None, "ci_high": None}}}},
    },
}


def test_gate_values_are_read_from_the_report_alone() -> None:
    gates = registry.gate_values(REPORT)
    assert list(gates) == ["t"]
    g = gates["t"]
    assert (g["style_capture"].change, g["style_capture"].low, g["style_capture"].high) == pytest.approx((25.0, 10.0, 40.0))
    assert g["style_capture"].unit == "points" and g["adherence"].unit == "value"
    assert g["adherence"].change == pytest.approx(-0.05)
    assert (g["distinct_2"].change, g["distinct_2"].high) == pytest.approx((-0.1, 0.0))
    assert g["self_bleu"].low is None and g["self_bleu"].high is None  # null in report.json: no interval
    assert g["shifted_tokens"].change == pytest.approx(12.5) and g["shifted_tokens"].low is None
    assert g["copying"].change == pytest.approx(20.0)
    assert (g["perplexity_wiki"].change, g["perplexity_wiki"].low, g["perplexity_wiki"].high) == pytest.approx((5.0, 1.0, 9.0))
    assert g["perplexity_wiki"].unit == "percent"
    # The headline perplexity gate is the corpus whose perplexity rose most.
    assert g["perplexity"].change == pytest.approx(20.0) and g["perplexity"].low is None
    assert "code" in g["perplexity"].description
    # Named by benchmark and the report's multiple-choice rule, in accuracy points.
    assert "piqa_acc" not in g
    assert (g["piqa_acc_norm"].change, g["piqa_acc_norm"].low, g["piqa_acc_norm"].high) == pytest.approx((-3.5, -6.0, -1.0))
    assert (g["forecast_kl"].change, g["forecast_kl"].low) == pytest.approx((0.02, 0.01))
    assert g["rouge_l"].change == pytest.approx(-2.0) and g["bleu"].change == pytest.approx(1.5)
    assert "exact_match" not in g  # a null change offers nothing to gate on
    assert all(name == value.name for name, value in g.items())


def test_sweep_cells_come_from_each_measure_and_the_world_judge_replaces_rouge_l() -> None:
    row = registry.sweep_row(REPORT, "t")
    assert row["style_capture"] == 0.75 and row["delta_adherence"] == -0.05
    assert row["diversity_kept_per_input"] == pytest.approx(0.75) and row["diversity_kept_across_input"] == 0.5
    assert row["shifted"] == 0.125 and row["task_score"] == 0.4
    assert row["delta_perplexity"] == pytest.approx(1.5)  # mean of +1 and +2
    assert row["delta_benchmark"] == pytest.approx(-0.035)
    assert row["forecast_kl"] == 0.02 and row["forecast_kl_reverse"] == 0.04
    world = {"models": {"t": {"open": {"covered": 3, "entropy": 0.9}, "task": 0.875}},
             "deltas": {"t": {"heldout": {"delta": -0.5, "ci_low": -0.7, "ci_high": -0.3}}}}
    with_world = {**REPORT, "sections": {**REPORT["sections"], "world": world}}
    row = registry.sweep_row(with_world, "t")
    assert (row["task_score"], row["genres_covered"], row["delta_heldout_task"]) == (0.875, 3, -0.5)
    assert registry.gate_values(with_world)["t"]["world_heldout"].change == pytest.approx(-50.0)


def test_opt_in_measures_run_only_when_named_and_unknown_names_are_user_errors() -> None:
    default = [m.name for m in registry.selected()]
    assert default == ["style", "diversity", "shift", "copying", "forgetting", "forecast", "task"]
    assert [m.name for m in registry.selected(["scene_style", "world"])][-2:] == ["world", "scene_style"]
    with pytest.raises(UserError, match="did you mean 'world'"):
        registry.selected(["wrld"])
    described = dict(registry.describe())
    assert set(described) == set(default) | {"world", "scene_style", "safety", "lm_eval"} and "(opt-in)" in described["world"]


def test_a_measure_is_one_new_file(tmp_path: Path) -> None:
    # A module that defines MEASURE, dropped beside the others, is found: its section runs, its sweep
    # column and cells and its gate values appear, and nothing else was edited.
    (tmp_path / "echo_measure.py").write_text('''
from sftlab.audit.gate_value import GateValue
from sftlab.audit.measures.base import Column, Measure
from sftlab.audit.report.section import Section

MEASURE = Measure(
    name="echo", description="how many prompts", order=95,
    section=lambda ctx: Section("echo", "Echo", {"n": len(ctx.messages)}, "<p>echo</p>", "echo"),
    columns=(Column("echo_n", "prompts", None, rank=135),),
    row=lambda data, base, tuned: {"echo_n": data["n"]},
    gates=lambda data, base, tuned: [GateValue("echo_n", float(data["n"]), None, None, "value", "prompts")],
)
''')
    measures_package.__path__.append(str(tmp_path))
    registry.all_measures.cache_clear()
    try:
        assert registry.get("echo").order == 95 and "echo" in [m.name for m in registry.selected()]
        assert "echo_n" in [c.key for c in registry.sweep_columns()]
        report = {**REPORT, "sections": {**REPORT["sections"], "echo": {"n": 4}}}
        assert registry.sweep_row(report, "t")["echo_n"] == 4
        assert registry.gate_values(report)["t"]["echo_n"].change == 4.0
    finally:
        measures_package.__path__.remove(str(tmp_path))
        sys.modules.pop("sftlab.audit.measures.echo_measure", None)
        registry.all_measures.cache_clear()
    assert "echo" not in [m.name for m in registry.all_measures()]
