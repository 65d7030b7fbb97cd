"""Sweep pieces that need no training: config checks, aggregation, the Pareto front, formatting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sftlab.errors import UserError
from sftlab.recipes.sweep import (
    ROW_FILE,
    SETTINGS_FILE,
    aggregate,
    finished_row,
    load_sweep,
    plan,
    resolve_base,
    run_settings,
)
from sftlab.recipes.sweep_table import COLUMNS, format_cell, pareto_front


def _sweep(tmp_path, **overrides):
    data = {
        "base_model": "base",
        "out": str(tmp_path / "sweep"),
        "train": {"train_file": "train.jsonl"},
        "strategies": [{"name": "full"}, {"name": "wise", "interpolate": {"source": "full", "alpha": 0.5}}],
        "audit": {"prompts": "prompts.jsonl"},
        **overrides,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_plan_runs_trained_strategies_before_interpolations(tmp_path):
    cfg = load_sweep(str(_sweep(tmp_path, strategies=[
        {"name": "wise", "interpolate": {"source": "full"}}, {"name": "full"}], seeds=[0, 1])))
    assert [(s.strategy.name, s.seed) for s in plan(cfg)] == [("full", 0), ("wise", 0), ("full", 1), ("wise", 1)]
    assert plan(cfg)[1].run_dir == tmp_path / "sweep" / "runs" / "wise" / "seed0"


def test_a_typo_in_a_strategy_is_caught_before_any_run(tmp_path):
    path = _sweep(tmp_path, strategies=[{"name": "full", "train": {"learning_rat": 0.1}}])
    with pytest.raises(UserError, match="did you mean 'learning_rate'"):
        load_sweep(str(path))


@pytest.mark.parametrize("strategies, message", [
    ([{"name": "a"}, {"name": "a"}], "unique"),
    ([{"name": "w", "interpolate": {"source": "missing"}}], "not a trained strategy"),
    ([{"name": "w", "interpolate": {"source": "w"}}], "not a trained strategy"),
])
def test_bad_strategy_lists_are_user_errors(tmp_path, strategies, message):
    with pytest.raises(UserError, match=message):
        load_sweep(str(_sweep(tmp_path, strategies=strategies)))


def test_pareto_front_by_hand():
    # (1,1) is beaten by (2,2); (3,0) and (0,3) and (2,2) trade off; (2,2) duplicates are both kept.
    points = [(1, 1), (2, 2), (3, 0), (0, 3), (2, 2)]
    assert pareto_front(points) == [1, 2, 3, 4]


def test_aggregate_mean_and_sample_std_over_seeds():
    rows = [{"strategy": "a", "seed": 0, "eval_loss": 1.0}, {"strategy": "a", "seed": 1, "eval_loss": 3.0},
            {"strategy": "b", "seed": 0, "eval_loss": 2.0}]
    table = aggregate(rows, ["a", "b"])
    a, b = table["strategies"]["a"]["columns"]["eval_loss"], table["strategies"]["b"]["columns"]["eval_loss"]
    assert a == {"mean": 2.0, "std": pytest.approx(2 ** 0.5)} and b == {"mean": 2.0, "std": None}
    assert table["strategies"]["b"]["columns"]["shifted"] == {"mean": None, "std": None}
    columns = {c.key: c for c in COLUMNS}
    assert format_cell(columns["shifted"], {"mean": 0.0412, "std": 0.005}) == "4.1% ± 0.5%"
    assert format_cell(columns["eval_loss"], {"mean": None, "std": None}) == "–"


def test_a_finished_run_is_skipped_only_when_its_settings_are_this_configs(tmp_path):
    cfg, base = resolve_base(load_sweep(str(_sweep(tmp_path))))
    full = plan(cfg)[0]
    assert finished_row(cfg, full, base) is None
    full.run_dir.mkdir(parents=True)
    (full.run_dir / SETTINGS_FILE).write_text(run_settings(cfg, full, base))
    (full.run_dir / ROW_FILE).write_text(json.dumps({"strategy": "full", "seed": 0}))
    assert finished_row(cfg, full, base)["strategy"] == "full"
    # Keys that cannot change a finished run's result (compiling, keeping checkpoints, logging) keep it done.
    same = load_sweep(str(_sweep(tmp_path, train={"train_file": "train.jsonl", "torch_compile": True,
                                                  "keep_checkpoints": False, "logging_steps": 3})))
    assert finished_row(same, plan(same)[0], base)["strategy"] == "full"
    # The same run dir under a changed learning rate: its row no longer belongs to this sweep.
    changed = load_sweep(str(_sweep(tmp_path, train={"train_file": "train.jsonl", "learning_rate": 0.5})))
    with pytest.raises(UserError, match="other settings"):
        finished_row(changed, plan(changed)[0], base)
    # A WiSE-FT mix of a changed source is stale too.
    assert run_settings(changed, plan(changed)[1], base) != run_settings(cfg, plan(cfg)[1], base)
    # The demo redoes such a run: its directory goes, and the run counts as not done.
    assert finished_row(changed, plan(changed)[0], base, redo_stale=True) is None and not full.run_dir.exists()


def test_a_base_retrained_in_place_makes_even_unfinished_runs_stale(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "model.safetensors").write_bytes(b"weights v1")
    cfg, ref = resolve_base(load_sweep(str(_sweep(tmp_path, base_model=str(base)))))
    full = plan(cfg)[0]
    full.run_dir.mkdir(parents=True)
    (full.run_dir / SETTINGS_FILE).write_text(run_settings(cfg, full, ref))  # started, killed before its row
    assert finished_row(cfg, full, ref) is None  # not finished: it will resume
    (base / "model.safetensors").write_bytes(b"weights v2, retrained")
    with pytest.raises(UserError, match="other settings"):
        finished_row(cfg, full, resolve_base(cfg)[1])  # its checkpoints belong to the old base: no resume


def _converted_copy(cache: Path, gguf: Path, weights: bytes) -> Path:
    """What a finished conversion of ``gguf`` leaves under the cache root ``cache``."""
    from sftlab.models.gguf import SOURCE_FILE, converted_dir, file_sha256

    sha = file_sha256(gguf)
    out = converted_dir(gguf, sha)
    assert out.is_relative_to(cache)
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(weights)
    (out / SOURCE_FILE).write_text(json.dumps({"source": str(gguf), "sha256": sha}))
    return out


@pytest.mark.parametrize("gguf_in_folder", [False, True])
def test_the_same_gguf_base_converted_under_another_cache_root_keeps_finished_runs(tmp_path, monkeypatch,
                                                                                  gguf_in_folder):
    gguf = tmp_path / "models" / "base.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF stand-in: only its SHA-256 names the conversion")
    where = {"base_model": str(gguf.parent), "gguf_file": gguf.name} if gguf_in_folder else {"base_model": str(gguf)}
    loaded = load_sweep(str(_sweep(tmp_path, **where)))

    monkeypatch.setenv("SFTLAB_CACHE", str(tmp_path / "cache_a"))
    first = _converted_copy(tmp_path / "cache_a", gguf, b"weights")
    cfg, base = resolve_base(loaded)
    assert base.path == str(first)
    full = plan(cfg)[0]
    full.run_dir.mkdir(parents=True)
    (full.run_dir / SETTINGS_FILE).write_text(run_settings(cfg, full, base))
    (full.run_dir / ROW_FILE).write_text(json.dumps({"strategy": "full", "seed": 0}))

    # Another cache root: another dir, written at another time, for the same file.
    monkeypatch.setenv("SFTLAB_CACHE", str(tmp_path / "cache_b"))
    second = _converted_copy(tmp_path / "cache_b", gguf, b"weights")
    cfg_b, base_b = resolve_base(loaded)
    assert base_b.path == str(second) != base.path
    assert finished_row(cfg_b, plan(cfg_b)[0], base_b)["strategy"] == "full"

    # Another GGUF file is another base: the run is stale.
    gguf.write_bytes(b"another GGUF stand-in")
    _converted_copy(tmp_path / "cache_b", gguf, b"other weights")
    cfg_c, base_c = resolve_base(loaded)
    with pytest.raises(UserError, match="other settings"):
        finished_row(cfg_c, plan(cfg_c)[0], base_c)


# --------------------------------------------------------------------------------------------------
# The headline of sweep.html, the run labels, and the module layout


def _report(tuned: str, *findings: tuple[str, str, str]) -> dict:
    """A run's report.json as the audit writes it, reduced to what the sweep's headline reads."""
    return {"base": "base", "models": {"base": "b", tuned: "t"},
            "summary": [{"model": tuned, "kind": kind, "text": text, "key": key} for kind, key, text in findings],
            "sections": {}}


def _summary_card(html: str, strategy: str) -> str:
    summary = html[html.index('id="summary"'):html.index("<section")]
    card = summary[summary.index(f"<h3>{strategy}</h3>"):]
    return card[:card.index("</div>")]


def test_the_sweep_headline_states_what_every_seed_found(tmp_path):
    from sftlab.recipes.sweep_report import write_sweep_report

    cfg = load_sweep(str(_sweep(tmp_path, seeds=[0, 1])))
    out = tmp_path / "sweep"
    reports = {
        ("full", 0): _report("full/seed0", ("lost", "perplexity/wiki", "perplexity on wiki +18.5% (10.00 → 11.85)"),
                             ("lost", "diversity/per_input", "diversity per prompt: EAD (n=1..4) -0.27")),
        ("full", 1): _report("full/seed1", ("lost", "perplexity/wiki", "perplexity on wiki +17.0% (10.00 → 11.70)")),
        ("wise", 0): _report("wise/seed0"),
        ("wise", 1): _report("wise/seed1"),
    }
    for (name, seed), doc in reports.items():
        path = out / "runs" / name / f"seed{seed}" / "audit" / "report.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(doc))
    table = aggregate([{"strategy": n, "seed": s, "eval_loss": 1.0} for n, s in reports], ["full", "wise"])
    html = write_sweep_report(out, table, cfg).read_text()
    full = _summary_card(html, "full")
    # Both seeds lost perplexity: stated, with each seed's figure.
    assert ('<li class="lost"><b>lost</b> · seed 0: perplexity on wiki +18.5% (10.00 → 11.85); '
            "seed 1: perplexity on wiki +17.0% (10.00 → 11.70)</li>") in full
    # Only seed 0 lost diversity: a note, not a loss.
    assert '<li class="note">lost in 1 of 2 seeds only (seed 0: diversity per prompt: EAD (n=1..4) -0.27)</li>' in full
    assert "no loss or gain" not in full
    assert "no loss or gain that clears its interval or threshold" in _summary_card(html, "wise")
    # The page says which rule it used.
    assert "when every one of its 2 seeds&#x27; audits (same measure, same direction) found it" in html
    summary = json.loads((out / "sweep.json").read_text())["summary"]
    assert [(f["model"], f["kind"], f["key"]) for f in summary] == [
        ("full", "lost", "perplexity/wiki"), ("full", "note", "diversity/per_input")]
    md = (out / "sweep.md").read_text()
    assert "- lost: seed 0: perplexity on wiki +18.5%" in md


def test_changes_the_seeds_disagree_on_are_notes():
    from sftlab.recipes.sweep_report import seed_findings

    up = _report("a/seed0", ("gained", "task/bleu", "BLEU on the eval set +2.00"))
    down = _report("a/seed1", ("lost", "task/bleu", "BLEU on the eval set -1.00"))
    findings = seed_findings("a", [(0, up), (1, down), (2, None)])
    assert [(f.kind, f.text) for f in findings] == [
        ("note", "gained in 1 of 3 seeds only (seed 0: BLEU on the eval set +2.00)"),
        ("note", "lost in 1 of 3 seeds only (seed 1: BLEU on the eval set -1.00)"),
        ("note", "seed 2: no audit report.json"),
    ]
    # One seed: its own findings, as its audit wrote them.
    only = seed_findings("a", [(0, up)])
    assert [(f.model, f.kind, f.text) for f in only] == [("a", "gained", "BLEU on the eval set +2.00")]


def test_each_sweep_run_is_audited_under_its_strategy_and_seed(tmp_path, monkeypatch):
    import sftlab.recipes.audit as audit_recipe
    import sftlab.recipes.sweep as sweep
    from sftlab.recipes.audit import model_names

    cfg, base = resolve_base(load_sweep(str(_sweep(tmp_path))))
    spec = plan(cfg)[0]
    seen = {}

    def fake_train(cfg, spec):
        return spec.run_dir / "model", {"train_seconds": 1.0, "peak_memory_mb": 1.0, "trainable_params": 1}

    def fake_audit(acfg, extra_sections=()):
        seen["models"] = names = model_names(acfg.base, acfg.tuned)
        tuned = list(names)[1]
        scores = {"per_input": {"ead": {"mean": 0.5}}, "across_input": {"ead": 0.5}}
        doc = {"base": "base", "models": names, "summary": [], "sections": {
            "diversity": {"models": {"base": scores, tuned: scores}},
            "shift": {"models": {tuned: {"class_fraction": {"shifted": 0.1}}}}}}
        Path(acfg.out).mkdir(parents=True)
        (Path(acfg.out) / "report.json").write_text(json.dumps(doc))

    monkeypatch.setattr(sweep, "train_run", fake_train)
    monkeypatch.setattr(audit_recipe, "run_audit", fake_audit)
    row = sweep.run_one(cfg, spec, base, {}, ())
    assert list(seen["models"]) == ["base", "full/seed0"]
    assert row["shifted"] == 0.1


def test_audit_labels_name_dir_mapping_and_plain_dirs(tmp_path):
    from sftlab.config import AuditConfig, build_config
    from sftlab.recipes.audit import model_names

    assert model_names("runs/base", ["lora=runs/x/seed0/adapter", "runs/y/seed0/model"]) == {
        "base": "runs/base", "lora": "runs/x/seed0/adapter", "seed0/model": "runs/y/seed0/model"}
    # An existing dir whose name holds '=' is a plain dir, not NAME=DIR.
    odd = tmp_path / "lr=0.1"
    odd.mkdir()
    assert list(model_names("b", [str(odd)])) == ["b", "lr=0.1"]
    cfg = build_config(AuditConfig, {"base": "b", "prompts": "p.jsonl", "tuned": {"full": "runs/full/model"}})
    assert model_names(cfg.base, cfg.tuned) == {"b": "b", "full": "runs/full/model"}
    with pytest.raises(UserError, match="NAME=DIR"):
        model_names("b", ["=runs/x"])


def test_the_table_module_imports_neither_the_sweep_nor_its_report():
    import ast

    import sftlab.recipes.sweep_report
    import sftlab.recipes.sweep_table

    def imports(module) -> set[str]:
        tree = ast.parse(Path(module.__file__).read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}

    assert not imports(sftlab.recipes.sweep_table) & {"sftlab.recipes.sweep", "sftlab.recipes.sweep_report"}
    assert "sftlab.recipes.sweep" not in imports(sftlab.recipes.sweep_report)
    assert "sftlab.recipes.sweep_table" in imports(sftlab.recipes.sweep_report)
