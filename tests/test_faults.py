"""Faults outside training: an audit killed while it scores, a sweep killed between two runs.

Each is killed with SIGKILL at a known point (tests/pause_at.py), then run again: the rerun must finish
and give what an uninterrupted run gives. (A rank killed in a distributed run: tests/test_train_fsdp.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import make_tiny_model_dir
from sftlab.cli import main

PAUSE = Path(__file__).with_name("pause_at.py")


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parent.parent / "src")
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def _sftlab(*args: str) -> None:
    """``sftlab ARGS`` in this process (the kill needs a process of its own; the other runs do not)."""
    assert main(["--offline", *args]) == 0


def _kill_at(marker: Path, target: str, n: int, *args: str) -> None:
    """Run ``sftlab ARGS`` until its Nth call of ``target``, then SIGKILL it there."""
    proc = subprocess.Popen([sys.executable, str(PAUSE), str(marker), target, str(n), *args], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, f"{target} was not called {n} times within 300 s"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def _models(tmp_path: Path, tokenizer) -> tuple[Path, Path]:
    return make_tiny_model_dir(tmp_path / "base", tokenizer), make_tiny_model_dir(tmp_path / "tuned", tokenizer, seed=1)


def _data(tmp_path: Path, shared_data: Path) -> dict[str, Path]:
    alpaca = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())
    files = {"prompts": tmp_path / "prompts.jsonl", "train": tmp_path / "train.json", "ref": tmp_path / "ref.txt",
             "bench": tmp_path / "bench.jsonl"}
    files["prompts"].write_text("".join(json.dumps({"instruction": r["instruction"]}) + "\n" for r in alpaca[:4]))
    files["train"].write_text(json.dumps(alpaca[100:116]))
    files["ref"].write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:1500])
    files["bench"].write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in [
        ("Who wrote Hamlet?", ["Shakespeare", "a river"], 0), ("What do bees make?", ["cars", "honey"], 1)]))
    return files


def _audit_args(base: Path, tuned: Path, files: dict[str, Path], out: Path) -> list[str]:
    return ["audit", "--base", str(base), "--tuned", f"tuned={tuned}", "--prompts", str(files["prompts"]),
            "--reference", str(files["ref"]), "--benchmark", str(files["bench"]), "--out", str(out),
            "sampling.num_samples=2", "sampling.max_new_tokens=8", "embedding_model=none", "bootstrap_samples=100"]


def _findings(report: Path) -> dict:
    """What an audit found: its sections and summary (meta holds timings, config holds the out dir)."""
    doc = json.loads(report.read_text())
    return {"sections": doc["sections"], "summary": doc["summary"]}


@pytest.mark.slow
def test_an_audit_killed_while_it_scores_gives_the_same_report_when_rerun(tiny_tokenizer, shared_data, tmp_path):
    base, tuned = _models(tmp_path, tiny_tokenizer)
    files = _data(tmp_path, shared_data)
    _sftlab(*_audit_args(base, tuned, files, tmp_path / "whole"))

    out = tmp_path / "killed"
    # Killed in the token-shift scoring: both models' samples are cached by then, the report not yet written.
    _kill_at(tmp_path / "paused", "sftlab.audit.shift:score_shift", 1, *_audit_args(base, tuned, files, out))
    assert not (out / "report.json").exists()
    _sftlab(*_audit_args(base, tuned, files, out))
    assert _findings(out / "report.json") == _findings(tmp_path / "whole" / "report.json")


def _sweep_config(path: Path, base: Path, files: dict[str, Path], out: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "base_model": str(base), "out": str(out),
        "train": {"train_file": str(files["train"]), "max_steps": 3, "max_length": 160, "learning_rate": 1e-3,
                  "per_device_train_batch_size": 4, "logging_steps": 1, "save_strategy": "no", "dropout": 0.0},
        "strategies": [{"name": "full"}, {"name": "wise", "interpolate": {"source": "full", "alpha": 0.5}}],
        "audit": {"prompts": str(files["prompts"]), "sampling": {"num_samples": 2, "max_new_tokens": 8},
                  "embedding_model": "none", "bootstrap_samples": 100},
    }))
    return path


def _table(sweep: Path) -> dict:
    """Each run's measured columns, less the wall-clock and memory ones that differ from run to run."""
    doc = json.loads((sweep / "sweep.json").read_text())
    timing = {"train_seconds", "audit_seconds", "peak_memory_mb"}
    rows = {(r["strategy"], r["seed"]): {k: v for k, v in r.items() if k not in timing} for r in doc["rows"]}
    for row in rows.values():
        row["model_dir"] = str(Path(row["model_dir"]).relative_to(sweep))
    return rows


@pytest.mark.slow
def test_a_sweep_killed_between_runs_finishes_with_the_same_table_when_rerun(tiny_tokenizer, shared_data, tmp_path):
    base, _ = _models(tmp_path, tiny_tokenizer)
    files = _data(tmp_path, shared_data)
    _sftlab("sweep", str(_sweep_config(tmp_path / "whole.yaml", base, files, tmp_path / "whole")))

    config = _sweep_config(tmp_path / "killed.yaml", base, files, tmp_path / "killed")
    # Killed as the second run (wise) starts: the first (full) is trained, audited and has its row.
    _kill_at(tmp_path / "paused", "sftlab.recipes.sweep:run_one", 2, "sweep", str(config))
    assert not (tmp_path / "killed" / "sweep.json").exists()
    _sftlab("sweep", str(config))
    assert _table(tmp_path / "killed") == _table(tmp_path / "whole")
