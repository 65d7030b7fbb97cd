"""bench/compare_reports.py: two demo trees compare equal except for timings, and a changed result is named."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "compare_reports.py"
spec = importlib.util.spec_from_file_location("compare_reports", SCRIPT)
compare_reports = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_reports)


def _tree(root: Path, shifted: float, seconds: float, version: str = "0.1.0") -> Path:
    run = root / "sweep" / "runs" / "full" / "seed0"
    (run / "audit").mkdir(parents=True)
    report = {"meta": {"sftlab_version": version, "seconds": seconds, "model_seconds": seconds / 2},
              "config": {"base": str(root / "base" / "model"), "sampling": {"num_samples": 4}},
              "sections": {"shift": {"models": {"full/seed0": {"shifted": shifted}}}}}
    (run / "audit" / "report.json").write_text(json.dumps(report))
    (run / "row.json").write_text(json.dumps({"shifted": shifted, "train_seconds": seconds, "peak_memory_mb": seconds}))
    (root / "sweep" / "sweep.json").write_text(json.dumps({"meta": {"created": str(seconds)},
                                                          "rows": [{"shifted": shifted, "eval_loss": float("nan")}]}))
    return root


def test_trees_that_differ_only_in_timings_versions_and_their_root_are_equal(tmp_path: Path, capsys) -> None:
    a, b = _tree(tmp_path / "a", 0.08, 30.3), _tree(tmp_path / "b", 0.08, 12.0, version="0.2.0")
    assert compare_reports.main([str(a), str(b)]) == 0
    assert "equal: 3 files" in capsys.readouterr().out


def test_a_changed_result_is_named_by_file_and_key(tmp_path: Path, capsys) -> None:
    a, b = _tree(tmp_path / "a", 0.08, 30.3), _tree(tmp_path / "b", 0.081, 30.3)
    assert compare_reports.main([str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "sweep/runs/full/seed0/audit/report.json:/sections/shift/models/full/seed0/shifted: 0.08 != 0.081" in out
    assert "sweep/sweep.json:/rows[0]/shifted" in out and "3 differences in 3 files" in out
    assert compare_reports.main([str(a), str(b), "--rtol", "0.05"]) == 0


def test_a_missing_report_and_a_path_outside_the_tree_are_differences(tmp_path: Path) -> None:
    a, b = _tree(tmp_path / "a", 0.08, 30.3), _tree(tmp_path / "b", 0.08, 30.3)
    (b / "sweep" / "runs" / "full" / "seed0" / "row.json").unlink()
    report = b / "sweep" / "runs" / "full" / "seed0" / "audit" / "report.json"
    doc = json.loads(report.read_text())
    doc["config"]["base"] = str(tmp_path / "elsewhere" / "base" / "model")
    report.write_text(json.dumps(doc))
    diffs = compare_reports.compare_trees(a, b)
    assert "sweep/runs/full/seed0/row.json: only in A" in diffs
    assert any(d.startswith("sweep/runs/full/seed0/audit/report.json:/config/base:") for d in diffs)
