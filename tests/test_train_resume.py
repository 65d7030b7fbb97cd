"""Checkpoints: a run killed with SIGKILL and resumed ends exactly where an uninterrupted run ends;
a checkpoint whose save was cut short is never picked up."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sftlab.cli import main
from sftlab.config import TrainConfig
from sftlab.errors import UserError
from sftlab.recipes.train import run_train
from sftlab.train.resume import resolve_resume
from sftlab.train.run_dir import recorded_train_seconds

MAX_STEPS = 80


def _config(model_dir: Path, data: Path, out: Path) -> dict:
    # Dropout stays on (GPT-2's 0.1) and 61 usable records in batches of 4 make 16 steps an epoch, so
    # resuming must restore the RNG state, the data order and the dataset's epoch, not only the weights.
    return dict(
        model_name_or_path=str(model_dir),
        train_file=[str(data)],
        output_dir=str(out),
        max_length=128,
        per_device_train_batch_size=4,
        max_steps=MAX_STEPS,
        learning_rate=3e-3,
        logging_steps=1,
        save_steps=5,
        save_total_limit=2,
        seed=7,
    )


def _final_loss(run_dir: Path) -> float:
    logs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in logs if "loss" in m]
    assert steps == list(range(1, MAX_STEPS + 1)), "every step logged exactly once"
    return next(m["loss"] for m in reversed(logs) if "loss" in m)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, shared_data) -> Path:
    records = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[300:364]
    path = tmp_path_factory.mktemp("data") / "alpaca_64.json"
    path.write_text(json.dumps(records))
    return path


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tiny_model_dir, data_file, tmp_path, capsys):
    reference = tmp_path / "reference"
    run_train(TrainConfig(**_config(tiny_model_dir, data_file, reference)))

    run = tmp_path / "killed"
    config = tmp_path / "killed.yaml"
    config.write_text(yaml.safe_dump(_config(tiny_model_dir, data_file, run)))
    command = [sys.executable, "-m", "sftlab.cli", "--offline", "train", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # Kill as soon as the second checkpoint is in place: mid-training, 10 of 80 steps done.
        deadline = time.time() + 120
        while not (run / "checkpoints" / "checkpoint-10").is_dir():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "model").exists(), "the run finished before the kill; the test proves nothing"
    assert json.loads((run / "checkpoints" / "checkpoint-10" / "trainer_state.json").read_text())["epoch"] < 1

    resumed_from = max((run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    recorded = recorded_train_seconds(resumed_from)
    assert recorded > 0  # the killed process's training time, written with its checkpoint

    # Resume through the same CLI entry point, in this process (a second interpreter start costs ~10 s).
    started = time.perf_counter()
    assert main(["--offline", "train", str(config)]) == 0
    resume_wall = time.perf_counter() - started
    assert "resume" in capsys.readouterr().out  # it did resume, from a checkpoint of the killed run
    # The run's cost is the killed part its checkpoint recorded plus the resumed part, which cannot
    # exceed the resumed call's own wall time.
    train_seconds = json.loads((run / "summary.json").read_text())["train_seconds"]
    assert recorded < train_seconds <= recorded + resume_wall
    assert _final_loss(run) == pytest.approx(_final_loss(reference), abs=1e-4)
    assert (run / "model" / "model.safetensors").is_file()


def test_half_written_checkpoint_is_never_resumed(tmp_path):
    ckpts = tmp_path / "checkpoints"
    (ckpts / "checkpoint-5").mkdir(parents=True)
    (ckpts / "checkpoint-5" / "trainer_state.json").write_text("{}")
    # A save killed midway leaves its files in .staging (the rename into place never happened).
    (ckpts / ".staging" / "checkpoint-10").mkdir(parents=True)
    (ckpts / ".staging" / "checkpoint-10" / "model.safetensors").write_bytes(b"partial")
    assert resolve_resume("auto", ckpts) == str(ckpts / "checkpoint-5")
    assert resolve_resume("never", ckpts) is None
    assert resolve_resume(str(ckpts / "checkpoint-5"), ckpts) == str(ckpts / "checkpoint-5")
    with pytest.raises(UserError, match="not a checkpoint dir"):
        resolve_resume(str(ckpts / ".staging" / "checkpoint-10"), ckpts)
    shutil.rmtree(ckpts)
    assert resolve_resume("auto", ckpts) is None


def test_resume_refuses_a_changed_config(tiny_model_dir, data_file, tmp_path):
    cfg = _config(tiny_model_dir, data_file, tmp_path / "run")
    run_train(TrainConfig(**{**cfg, "max_steps": 5}))
    # More steps is fine (the run goes on); another learning rate would mix two runs.
    with pytest.raises(UserError, match=r"different config \(changed: learning_rate\)"):
        run_train(TrainConfig(**{**cfg, "max_steps": 10, "learning_rate": 1e-3}))
    run_train(TrainConfig(**{**cfg, "max_steps": 10}))
    state = json.loads((tmp_path / "run" / "checkpoints" / "checkpoint-10" / "trainer_state.json").read_text())
    assert state["global_step"] == 10
    # Rerunning the finished run changes nothing: no second save (the model files keep their mtime, so
    # caches keyed on them stay valid) and no second closing eval or log line.
    run = tmp_path / "run"
    model_file, metrics = run / "model" / "model.safetensors", run / "metrics.jsonl"
    before = (model_file.stat().st_mtime_ns, metrics.read_text())
    assert run_train(TrainConfig(**{**cfg, "max_steps": 10, "logging_steps": 2})) == run / "model"
    assert (model_file.stat().st_mtime_ns, metrics.read_text()) == before
