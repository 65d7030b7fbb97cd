"""A 2-process data-parallel run: `torchrun --nproc_per_node 2 -m sftlab.cli train` on CPU (gloo), with
packing, evaluation and NEFTune. (DDP with the regularizers, against one process on the same global
batch: tests/test_train_fsdp.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml


@pytest.mark.slow
def test_torchrun_two_processes(tiny_model_dir, shared_data, tmp_path):
    records = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[400:464]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    run = tmp_path / "run"
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(dict(
        model_name_or_path=str(tiny_model_dir), train_file=[str(data)], output_dir=str(run), max_length=128,
        per_device_train_batch_size=4, num_train_epochs=2, learning_rate=3e-3, logging_steps=1, save_steps=4,
        eval_fraction=0.2, packing=True, neftune_noise_alpha=5.0,
    )))
    # --standalone: a local rendezvous on a free port, so parallel test runs do not collide.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "sftlab.cli", "--offline", "train", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
        raise
    assert proc.returncode == 0, stderr[-3000:]

    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = next(m["data/rows"] for m in logs if "data/rows" in m)
    # Each optimizer step takes 4 rows on each of the 2 ranks: half the steps of a single process.
    steps_per_epoch = -(-rows // 8)
    train_steps = [m["step"] for m in logs if "loss" in m]
    assert train_steps == list(range(1, 2 * steps_per_epoch + 1)), "rank 0 alone logs, once per step"
    noised = [m["neftune/noised_forwards"] for m in logs if "loss" in m]
    assert noised[0] >= 1 and noised == sorted(noised), "NEFTune noises the DDP-wrapped model's embeddings"
    evals = [m["eval_loss"] for m in logs if "eval_loss" in m]
    assert evals[-1] < evals[0]
    assert (run / "model" / "model.safetensors").is_file()
    assert stdout.count("sftlab train ->") == 1  # the summary comes from the main process only
    assert "attention_mask" not in stderr  # packed rows: no spurious padding warning
