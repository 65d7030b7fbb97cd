"""The CI gate (``sftlab audit --fail-on``): parsing, verdicts and exit codes, on a saved report.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftlab.audit.gate import GATE_FAILED, evaluate, gate, parse_checks
from sftlab.audit.gate_value import GateValue
from sftlab.audit.gate_values import gate_values, list_measures
from sftlab.cli import main
from sftlab.errors import UserError

# A real audit's report.json (a tiny base against a full fine-tune and a LoRA adapter, with SFT data, a corpus,
# PIQA items and an eval set), its per-sample lists trimmed: written by tests/data/make_gate_report.py.
REPORT = Path(__file__).parent / "data" / "gate_report.json"


@pytest.fixture(scope="module")
def doc() -> dict:
    return json.loads(REPORT.read_text())


def test_gate_values_are_the_reports_changes_in_the_measures_units(doc) -> None:
    values = gate_values(doc)
    base = doc["base"]
    assert set(values) == set(doc["models"]) - {base}
    mc, ppl = doc["sections"]["forgetting"]["multiple_choice"], doc["sections"]["forgetting"]["perplexity"]
    for m, per in values.items():
        bench = next(iter(mc))
        acc = per[f"{bench}_acc"]  # points: 100 x the change in accuracy, recomputed from the two accuracies
        assert acc.unit == "points" and acc.change == pytest.approx(100 * (mc[bench][m]["accuracy"] - mc[bench][base]["accuracy"]))
        corpus = next(iter(ppl))
        p = per["perplexity"]  # percent: 100 x (tuned / base - 1)
        assert p.unit == "percent" and p.change == pytest.approx(100 * (ppl[corpus][m]["perplexity"] / ppl[corpus][base]["perplexity"] - 1))
        assert (per[f"perplexity_{corpus}"].change, per[f"perplexity_{corpus}"].low) == (p.change, p.low)
        assert per["style_capture"].unit == "points" and per["adherence"].unit == "value" and "rouge_l" in per
        for v in per.values():  # measures without an interval (a corpus-level figure) give None bounds
            assert v.low is None or v.low <= v.change <= v.high


def test_parse_checks() -> None:
    checks = parse_checks(["style_capture>20, adherence<-0.05", "perplexity>=+5%", "piqa_acc<-2"])
    assert [(c.name, c.op, c.threshold, c.percent_sign) for c in checks] == [
        ("style_capture", ">", 20.0, False), ("adherence", "<", -0.05, False), ("perplexity", ">=", 5.0, True),
        ("piqa_acc", "<", -2.0, False)]
    for bad in ("style_capture=>20", "piqa_acc<", "> 3", "perplexity>5%%", "adherence<-0.05x", ""):
        with pytest.raises(UserError, match="--fail-on"):
            parse_checks([bad])


def _value(change: float, low: float | None, high: float | None, unit: str = "points") -> dict[str, dict[str, GateValue]]:
    return {"tuned": {"m": GateValue("m", change, low, high, unit, "")}}


def test_verdicts_hand_cases() -> None:
    (v,) = evaluate(parse_checks(["m<-2"]), _value(-3.0, -5.0, -1.0))
    assert v.past and not v.interval_past and v.failed  # -3 < -2, but the interval reaches -1
    (v,) = evaluate(parse_checks(["m<-2"]), _value(-3.0, -5.0, -1.0), interval_only=True)
    assert v.past and not v.failed
    (v,) = evaluate(parse_checks(["m<-2"]), _value(-3.0, -5.0, -2.5), interval_only=True)
    assert v.interval_past and v.failed
    (v,) = evaluate(parse_checks(["m>20"]), _value(25.0, 21.0, 30.0))
    assert v.interval_past
    (v,) = evaluate(parse_checks(["m>=20"]), _value(20.0, 19.0, 21.0))
    assert v.past and not v.interval_past
    (v,) = evaluate(parse_checks(["m>20"]), _value(19.0, 10.0, 30.0))
    assert not v.past and not v.failed
    (v,) = evaluate(parse_checks(["m<-2"]), _value(-3.0, None, None), interval_only=True)
    assert v.past and not v.failed  # no interval: never clears it
    with pytest.raises(UserError, match="drop the %"):
        evaluate(parse_checks(["m<-2%"]), _value(-3.0, -5.0, -1.0))
    code, lines = gate(parse_checks(["m<-2"]), _value(-3.0, -5.0, -1.0))
    assert code == GATE_FAILED and lines == [
        "FAIL tuned: m -3 points (95% CI [-5 points, -1 points]) < -2 points [m<-2]: the interval reaches back over "
        "the threshold, so this may be noise of the probe set"]


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["audit", "--from-report", str(REPORT), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _threshold_inside_interval(doc, name: str) -> tuple[str, GateValue]:
    """A measure whose change is not 0 and whose interval spans more than the change alone."""
    values = gate_values(doc)
    model = next(iter(values))
    return model, values[model][name]


def test_cli_pass_and_fail(doc, capsys) -> None:
    code, out, _ = _cli(capsys, "--fail-on", "perplexity>1000%,piqa_acc<-100,style_capture>101")
    assert code == 0 and "gate: passed" in out and "FAIL" not in out
    model, v = _threshold_inside_interval(doc, "perplexity")
    code, out, _ = _cli(capsys, "--fail-on", f"perplexity>{v.change - 1e-6}%")
    assert code == GATE_FAILED and f"FAIL {model}: perplexity" in out and "gate: FAILED, 1 failure of 1 check" in out


def test_cli_fails_only_on_the_interval_when_asked(doc, capsys) -> None:
    model, v = _threshold_inside_interval(doc, "style_capture")
    assert v.low < v.change  # the fixture's interval is not degenerate
    threshold = (v.low + v.change) / 2  # the change is above it, the interval's low end below
    check = f"style_capture>{threshold}"
    code, out, _ = _cli(capsys, "--fail-on", check)
    assert code == GATE_FAILED and f"FAIL {model}: style_capture" in out and "may be noise" in out
    code, out, _ = _cli(capsys, "--fail-on", check, "--fail-on-interval")
    assert code == 0 and f"warn {model}: style_capture" in out
    code, out, _ = _cli(capsys, "--fail-on", f"style_capture>{v.low - 1}", "--fail-on-interval")
    assert code == GATE_FAILED and "the whole interval is past the threshold too" in out


def test_cli_unknown_measure_names_the_closest(capsys) -> None:
    code, _, err = _cli(capsys, "--fail-on", "style_captur>20")
    assert code == 2 and "did you mean 'style_capture'" in err and "Traceback" not in err
    code, _, err = _cli(capsys, "--fail-on", "pica_acc<-2")  # the form of a benchmark measure, no such benchmark
    assert code == 2 and "did you mean 'piqa_acc'" in err


def test_cli_unparsable_check_exits_2_before_any_audit(tmp_path: Path, capsys) -> None:
    code = main(["audit", "--base", str(tmp_path / "nowhere"), "--tuned", str(tmp_path / "x"),
                 "--fail-on", "style_capture=>20"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot read 'style_capture=>20'" in err and "Traceback" not in err


def test_list_measures(capsys) -> None:
    assert main(["audit", "--list-measures"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == list_measures()
    for name in ("style_capture", "adherence", "rouge_l", "<benchmark>_acc", "perplexity"):
        assert name in out


@pytest.mark.parametrize(("check", "extra", "words"), [
    ("style_capture>20", [], "style_capture needs the SFT data its style classifier learns from: add --sft-data FILE"),
    ("forecast_kl>0.5", [], "forecast_kl needs the SFT data's prompts"),
    ("refusal<-10", [], "refusal needs the safety suite"),
    ("adherence<-0.05", ["embedding_model=none"], "adherence needs a sentence encoder"),
    ("lmeval_arc_easy_acc<-2", [], "checks an lm-eval task, and this audit runs none"),
])
def test_cli_a_check_the_inputs_cannot_answer_exits_2_before_any_audit(tmp_path: Path, capsys, check, extra,
                                                                        words) -> None:
    # The base does not exist: an audit that started would stop on it with another message.
    code = main(["audit", "--base", str(tmp_path / "nowhere"), "--tuned", str(tmp_path / "x"), "--fail-on", check,
                 *extra])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and words in err and "Traceback" not in err
    assert "nowhere" not in err


def test_cli_checks_the_inputs_give_pass_the_early_check(tmp_path: Path) -> None:
    from sftlab.config import AuditConfig
    from sftlab.recipes.audit_validate import check_gate_inputs

    cfg = AuditConfig(base="b", tuned={"t": "t"}, sft_data="sft.jsonl", suites=["chat", "safety"],
                      measures={"lm_eval": {"tasks": ["arc_easy"]}})
    check_gate_inputs(parse_checks(["style_capture>20,copying>5,forecast_kl>1,adherence<-0.05,refusal<-10,"
                                    "over_refusal>10,lmeval_arc_easy_acc<-2,piqa_acc<-2,perplexity>+5%"]), cfg)
