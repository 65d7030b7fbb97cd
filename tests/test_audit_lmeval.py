"""lm-evaluation-harness tasks through the audit (``--lm-eval-tasks``): the paired change on hand-computed
cases, the errors, and an offline task on SmolLM2 whose figures equal a direct ``lm_eval.simple_evaluate``
and are read back from the score cache by a second audit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from sftlab.audit.lm_harness import LmEvalSettings, is_share, item_scores, paired_change, plan_tasks
from sftlab.audit.measures import lmeval as lmeval_measure
from sftlab.audit.measures import registry
from sftlab.audit.measures.lmeval import MEASURE, changes
from sftlab.cli import main
from sftlab.errors import UserError

TASK = "piqa_local"


def test_paired_change_pairs_documents_by_id_and_matches_the_hand_computed_interval() -> None:
    # Documents 0-2 are scored by both models, in a different order; document 3 only by the tuned one.
    base = {"2": 1.0, "0": 1.0, "1": 0.0}
    tuned = {"0": 1.0, "3": 0.0, "1": 1.0, "2": 1.0}
    delta, low, high, n = paired_change(base, tuned, n_boot=20000, seed=0)
    # Differences 0, +1, 0: the mean is 1/3. A replicate's mean is k/3 with k ~ Binomial(3, 1/3):
    # P(k=0) = 8/27 > 2.5%, so the low end is 0; P(k<=2) = 26/27 < 97.5%, so the high end is 1.
    assert n == 3
    assert delta == pytest.approx(1 / 3)
    assert (low, high) == (0.0, 1.0)
    # Every document one point better: the interval is that point.
    assert paired_change({"0": 0.0, "1": 0.0}, {"1": 1.0, "0": 1.0}, 500, 1)[:3] == (1.0, 1.0, 1.0)


def test_item_scores_keep_the_mean_metrics_of_each_filter() -> None:
    samples = [{"doc_id": d, "filter": f, "metrics": ["exact_match", "f1"], "exact_match": float(d == 1), "f1": (d, 1)}
               for d in (0, 1) for f in ("strict", "flexible")]
    scores = item_scores(samples, {"exact_match": "mean", "f1": "f1_score"})
    assert scores == {"exact_match,strict": {"0": 0.0, "1": 1.0}, "exact_match,flexible": {"0": 0.0, "1": 1.0}}
    assert is_share(scores["exact_match,strict"], {"0": 1.0})
    assert not is_share({"0": 0.5}, {"0": 2.3})  # a perplexity is not a share


def _run(acc: float, items: dict[str, float], ppl: float) -> dict:
    return {"results": {"t": {"alias": "t", "acc,none": acc, "acc_stderr,none": 0.1, "word_perplexity,none": ppl},
                        "g": {"alias": "g", "acc,none": acc / 2}},
            "higher_is_better": {"t": {"acc": True, "word_perplexity": False}, "g": {"acc": True}},
            "items": {"t": {"acc,none": items}}}


def test_changes_and_gate_values_from_hand_built_runs() -> None:
    base = _run(0.5, {"0": 1.0, "1": 0.0, "2": 1.0, "3": 0.0}, 20.0)
    tuned = _run(0.75, {"0": 1.0, "1": 1.0, "2": 1.0, "3": 0.0}, 25.0)
    out = changes(base, tuned, n_boot=200, seed=0)
    acc = out["t"]["acc,none"]
    assert acc["delta"] == pytest.approx(0.25) and acc["unit"] == "points" and acc["n"] == 4
    assert acc["ci_low"] <= 0.25 <= acc["ci_high"]
    # A figure lm-eval does not average over documents, and a group's figure: the change, no interval.
    assert out["t"]["word_perplexity,none"]["delta"] == pytest.approx(5.0)
    assert out["t"]["word_perplexity,none"]["ci_low"] is None and out["t"]["word_perplexity,none"]["unit"] == "value"
    assert out["g"]["acc,none"]["delta"] == pytest.approx(0.125) and out["g"]["acc,none"]["n"] is None
    assert "acc_stderr,none" not in out["t"]
    gates = {g.name: g for g in MEASURE.gates({"changes": {"tuned": out}}, "base", "tuned")}
    assert gates["lmeval_t_acc"].change == pytest.approx(25.0) and gates["lmeval_t_acc"].unit == "points"
    assert gates["lmeval_t_word_perplexity"].change == pytest.approx(5.0) and gates["lmeval_t_word_perplexity"].low is None


def test_without_lm_eval_the_audit_names_the_extra(monkeypatch, tmp_path, tiny_model_dir, capsys) -> None:
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if it were not installed
    with pytest.raises(UserError, match=r"pip install 'sftlab\[lm-eval\]'"):
        plan_tasks(LmEvalSettings(tasks=["arc_easy"]))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Name a colour."}) + "\n")
    code = main(["--offline", "audit", "--base", str(tiny_model_dir), "--tuned", f"t={tiny_model_dir}", "--prompts",
                 str(prompts), "--lm-eval-tasks", "arc_easy", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "pip install 'sftlab[lm-eval]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any model ran


def _task_dir(root: Path, shared_data: Path, n: int = 20) -> Path:
    """A multiple-choice task over a local json file: PIQA's n shortest dev items, in lm-eval's own piqa form."""
    items = [json.loads(line) for line in (shared_data / "piqa" / "dev.jsonl").read_text().splitlines()]
    items = sorted(items, key=lambda x: len(x["goal"]) + len(x["sol1"]) + len(x["sol2"]))[:n]
    root.mkdir()
    (root / "piqa_local.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    (root / "piqa_local.yaml").write_text(f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / 'piqa_local.jsonl'}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{goal}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: "{{{{[sol1, sol2]}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""")
    return root


def test_task_entries_name_tasks_yaml_files_and_dirs(tmp_path, shared_data) -> None:
    tasks = _task_dir(tmp_path / "tasks", shared_data, n=3)
    by_dir = plan_tasks(LmEvalSettings(tasks=[str(tasks)]))
    assert by_dir.tasks == (TASK,) and by_dir.specs == (TASK,) and not by_dir.defaults
    assert by_dir.aggregation[TASK] == {"acc": "mean", "acc_norm": "mean"}
    by_file = plan_tasks(LmEvalSettings(tasks=[str(tasks / "piqa_local.yaml")]))
    assert by_file.tasks == (TASK,) and by_file.fingerprint == by_dir.fingerprint
    by_name = plan_tasks(LmEvalSettings(tasks=[TASK], include_path=[str(tasks)]))
    assert by_name.tasks == (TASK,) and not by_name.defaults
    # Editing the task's data changes the cache key.
    (tasks / "piqa_local.jsonl").write_text((tasks / "piqa_local.jsonl").read_text().splitlines()[0] + "\n")
    assert plan_tasks(LmEvalSettings(tasks=[str(tasks)])).fingerprint != by_dir.fingerprint
    with pytest.raises(UserError, match="not a dir of task YAMLs"):
        plan_tasks(LmEvalSettings(tasks=[TASK], include_path=[str(tmp_path / "nope")]))


def _noisy_copy(source: Path, out: Path) -> Path:
    """A tuned model made here: the base's weights plus seeded noise (0.3 of each matrix's spread)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and "embed" not in name:
                param.add_(torch.randn(param.shape, generator=gen) * param.std() * 0.3)
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(out))
    return out


@pytest.mark.slow
def test_an_offline_task_through_the_audit_equals_direct_simple_evaluate(tmp_path, smollm2_dir, shared_data,
                                                                         monkeypatch) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = _task_dir(tmp_path / "tasks", shared_data)
    tuned = _noisy_copy(smollm2_dir, tmp_path / "tuned")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Name a colour."}) + "\n")
    out = tmp_path / "audit"
    code = main(["--offline", "audit", "--base", str(smollm2_dir), "--tuned", f"noisy={tuned}", "--prompts", str(prompts),
                 "--lm-eval-tasks", str(tasks), "--out", str(out), "dtype=float32", "embedding_model=none",
                 "sampling.num_samples=1", "sampling.max_new_tokens=2", "forecast_prompts=0", "bootstrap_samples=1000",
                 "--fail-on", f"lmeval_{TASK}_acc<-100"])
    assert code == 0  # the gate knows the name, and no change is below -100 points
    report = json.loads((out / "report.json").read_text())
    section = report["sections"]["lm_eval"]
    base_name = next(iter(report["models"]))
    markdown, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for name, model_dir in ((base_name, smollm2_dir), ("noisy", tuned)):
        direct = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(model_dir), "dtype": "float32"},
                                         tasks=[TASK], task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
                                         batch_size=section["batch_size"], device="cpu")
        # Every figure lm-eval reports, unchanged: acc, acc_norm, their stderr, the sample count.
        assert section["models"][name]["results"][TASK] == direct["results"][TASK]
        assert section["models"][name]["n-samples"] == direct["n-samples"]
        for key in ("acc,none", "acc_stderr,none", "acc_norm,none", "acc_norm_stderr,none"):
            shown = f"{direct['results'][TASK][key]:.4f}"  # as lm-eval's own table prints it
            assert shown in markdown and shown in page
    for key in ("acc,none", "acc_norm,none"):
        change = section["changes"]["noisy"][TASK][key]
        figures = [section["models"][m]["results"][TASK][key] for m in (base_name, "noisy")]
        # Every document is paired, so the mean change is the change of lm-eval's two figures.
        assert change["n"] == 20 and change["unit"] == "points"
        assert change["delta"] == pytest.approx(figures[1] - figures[0])
        assert change["ci_low"] <= change["delta"] <= change["ci_high"]
    assert section["changes"]["noisy"][TASK]["acc,none"]["delta"] != 0  # the noise moved some answers
    gate = registry.gate_values(report)["noisy"][f"lmeval_{TASK}_acc"]
    assert gate.change == pytest.approx(100 * section["changes"]["noisy"][TASK]["acc,none"]["delta"])
    # The same report, gated from disk: a threshold the change is past fails it (exit 3).
    assert main(["audit", "--from-report", str(out / "report.json"), "--fail-on", f"lmeval_{TASK}_acc<100"]) == 3
    # The same audit again reads both models' lm-eval runs back from the score cache: lm-eval does not run.
    def no_second_run(*args, **kwargs):
        raise AssertionError("lm-eval ran although its results were cached")

    monkeypatch.setattr(lmeval_measure, "evaluate", no_second_run)
    again = tmp_path / "audit_again"
    assert main(["--offline", "audit", "--base", str(smollm2_dir), "--tuned", f"noisy={tuned}", "--prompts", str(prompts),
                 "--lm-eval-tasks", str(tasks), "--out", str(again), "dtype=float32", "embedding_model=none",
                 "sampling.num_samples=1", "sampling.max_new_tokens=2", "forecast_prompts=0",
                 "bootstrap_samples=1000"]) == 0
    cached = json.loads((again / "report.json").read_text())["sections"]["lm_eval"]
    assert cached["models"] == section["models"] and cached["changes"] == section["changes"]
