"""The examples' seed tables: the 95% Student-t interval by hand, and the plot of a seed table."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _seed_sweep():
    spec = importlib.util.spec_from_file_location("seed_sweep", EXAMPLES / "seed_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_t_interval_by_hand() -> None:
    t_interval = _seed_sweep().t_interval
    # [1, 2, 3]: mean 2, sample std 1, t_{0.975, 2} = 4.302653: half-width 4.302653 / sqrt(3) = 2.484138.
    mean, half = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(2.484138, abs=1e-6)
    # Two seeds: t_{0.975, 1} = 12.706205, std of [0, 1] is 1/sqrt(2): half-width 12.706205 / 2.
    assert t_interval([0.0, 1.0])[1] == pytest.approx(6.353102, abs=1e-6)
    assert t_interval([5.0]) == (5.0, None)


def test_plot_seed_table_writes_an_image_and_names_a_missing_strategy(tmp_path: Path) -> None:
    def entry(values: list[float]) -> dict:
        mean, half = _seed_sweep().t_interval(values)
        return {"seeds": list(range(len(values))), "train_seconds": 1.0,
                "measures": {"eval_loss": {"mean": mean, "half_width": half}},
                "runs": {str(i): {"eval_loss": v, "base_eval_loss": None} for i, v in enumerate(values)}}

    table = {"lora_1x": entry([2.0, 2.1]), "lora_4x": entry([1.9]), "full_1x": entry([2.0, 2.2, 2.1])}
    path = tmp_path / "seed_table.json"
    path.write_text(json.dumps(table))
    out = tmp_path / "plot.png"
    cmd = [sys.executable, str(EXAMPLES / "plot_seed_table.py"), str(path), "--x", "lora_1x=30:LoRA",
           "lora_4x=120:LoRA", "full_1x=30:full", "--logx", "--measures", "eval_loss", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A strategy the table lacks is named in the error.
    bad = subprocess.run(cmd[:4] + ["nope=1"] + cmd[7:], capture_output=True, text=True)
    assert bad.returncode != 0 and "no strategy nope" in bad.stderr
