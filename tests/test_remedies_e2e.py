"""Remedies composed in one `sftlab train` run, end to end on a tiny model.

- LoRA + NEFTune + replay + KL-to-base + GEM: every component acts and is logged, the run is finite,
  the adapter reloads, replay tokens are counted, and no second copy of the weights is held; killed
  after a checkpoint and resumed, it ends exactly where the uninterrupted run ends.
- Full fine-tuning + EWC + L2-SP, stopped after a checkpoint and resumed: the Fisher is saved in the
  run dir and reused, the anchors stay the base weights, and the resumed run ends where an
  uninterrupted one does.
- The ASFT preset (DFT + forward KL to the base on responses) with LoRA and NEFTune: it expands to
  those parts, each acts and is logged, eval_loss stays cross-entropy, and the saved config reloads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from sftlab.config import TrainConfig
from sftlab.recipes.train import finish_train, prepare_train, run_train
from sftlab.train import regularizers
from sftlab.train.regularizers import FISHER_FILE, KLToBase


@pytest.fixture(scope="module")
def data(tmp_path_factory, shared_data) -> dict[str, Path]:
    """48 Alpaca records, and two plain-text corpora cut from tinyshakespeare (replay, EWC's Fisher)."""
    out = tmp_path_factory.mktemp("remedies_data")
    records = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[400:448]
    (out / "sft.json").write_text(json.dumps(records))
    paragraphs = (shared_data / "tinyshakespeare" / "input.txt").read_text().split("\n\n")
    (out / "replay.txt").write_text("\n\n".join(paragraphs[:200]))
    (out / "fisher.txt").write_text("\n\n".join(paragraphs[200:240]))
    return {"sft": out / "sft.json", "replay": out / "replay.txt", "fisher": out / "fisher.txt"}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _train_logs(run: Path) -> list[dict]:
    return [m for m in _metrics(run) if "loss" in m]


class Crash(Exception):
    """Stands in for a kill: raised mid-run, after a checkpoint."""


class CrashAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs) -> None:
        if state.global_step == self.step:
            raise Crash


def _combined_config(model_dir: Path, data: dict[str, Path], run: Path) -> TrainConfig:
    return TrainConfig(
        model_name_or_path=str(model_dir),
        train_file=[str(data["sft"])],
        output_dir=str(run),
        method="lora",
        lora={"r": 4, "alpha": 8, "target_modules": ["c_attn", "c_fc"]},
        loss="gem",
        neftune_noise_alpha=5.0,
        neftune_schedule="linear_decay",
        replay={"corpus": str(data["replay"]), "ratio": 0.3},
        kl_to_base={"beta": 0.5, "direction": "forward", "on": "response"},
        packing=True,
        max_length=96,
        per_device_train_batch_size=4,
        max_steps=6,
        learning_rate=2e-2,
        logging_steps=1,
        eval_fraction=0.1,
        save_steps=2,
    )


def test_lora_neftune_replay_kl_gem_together(tiny_model_dir, data, tmp_path):
    from peft import PeftModel

    run = tmp_path / "combined"
    session = prepare_train(_combined_config(tiny_model_dir, data, run))
    trainer = session.trainer
    n_params = sum(p.numel() for p in trainer.model.parameters())
    assert trainer.args.neftune_noise_alpha is None  # transformers' own hook (padded length) stays off
    (kl,) = [r for r in trainer.regularizers if isinstance(r, KLToBase)]
    assert kl.base_copy is None  # LoRA: the base is the same model with the adapter off
    out = finish_train(session)
    assert sum(p.numel() for p in trainer.model.parameters()) == n_params  # and no weights were added

    logs = _train_logs(run)
    assert [m["step"] for m in logs] == list(range(1, 7))
    for m in logs:
        for key in ("loss", "loss/task", "loss/kl_to_base", "neftune/alpha"):
            assert math.isfinite(m[key]), (key, m)
        assert m["loss"] == pytest.approx(m["loss/task"] + m["loss/kl_to_base"], rel=1e-4, abs=1e-6)
    # The tuned forward has noise and dropout, the base forward neither: the KL is positive from step 1.
    assert all(m["loss/kl_to_base"] > 0 for m in logs)
    # GEM, not cross-entropy: at random init cross-entropy would be about ln(V) = 7.6; GEM's value,
    # E_q[z] - z_y, starts near 0.
    assert abs(logs[0]["loss/task"]) < 1.0
    # NEFTune fired in training and its alpha decayed linearly: alpha * (1 - step/max_steps) at step begin.
    assert [m["neftune/alpha"] for m in logs] == pytest.approx([5.0 * (1 - s / 6) for s in range(6)])
    assert logs[-1]["neftune/noised_forwards"] == 6  # one per step: no extra noised forward (eval, base)
    # Replay tokens were mixed in and counted, per epoch in metrics.jsonl and in data/stats.json.
    data_logs = [m for m in _metrics(run) if "data/replay_tokens" in m]
    assert data_logs and data_logs[0]["data/replay_tokens"] > 0
    assert 0.15 < data_logs[0]["data/replay_fraction"] < 0.45
    stats = json.loads((run / "data" / "stats.json").read_text())
    assert stats["train_epochs"][0]["replay_tokens"] == data_logs[0]["data/replay_tokens"]

    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "lora" and summary["global_step"] == 6
    assert 0 < summary["trainable_params"] < summary["total_params"]
    assert summary["final_train_loss"] == pytest.approx(logs[-1]["loss"])
    assert summary["eval_loss_first"] is not None and summary["train_seconds"] > 0
    assert summary["peak_memory_mb"] > 0

    # The adapter reloads with plain PEFT, and it changed the model.
    assert out == run / "adapter"
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    ids = torch.randint(2, 500, (1, 12))
    with torch.no_grad():
        before = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, str(out)).eval()
        after = tuned(input_ids=ids).logits
    assert torch.isfinite(after).all()
    assert (after - before).abs().max() > 1e-3

    # Killed after checkpoint-4 and resumed, the same run ends exactly where the uninterrupted one did:
    # NEFTune's noise (RNG), its schedule, the replay mix, KL and GEM all pick up where they were.
    crashed = tmp_path / "crashed"
    session = prepare_train(_combined_config(tiny_model_dir, data, crashed))
    session.trainer.add_callback(CrashAt(step=4))
    with pytest.raises(Crash):
        finish_train(session)
    assert (crashed / "checkpoints" / "checkpoint-4").is_dir() and not (crashed / "adapter").exists()
    run_train(_combined_config(tiny_model_dir, data, crashed))
    resumed = _train_logs(crashed)
    assert [m["step"] for m in resumed] == list(range(1, 7))
    for mine, ref in zip(resumed[4:], logs[4:]):
        for key in ("loss", "loss/task", "loss/kl_to_base", "neftune/alpha"):
            assert mine[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-7), (key, mine["step"])


def _ewc_config(model_dir: Path, data: dict[str, Path], run: Path, steps: int) -> TrainConfig:
    return TrainConfig(
        model_name_or_path=str(model_dir),
        train_file=[str(data["sft"])],
        output_dir=str(run),
        l2sp={"lambda": 5.0},
        ewc={"lambda": 50.0, "fisher_corpus": str(data["fisher"]), "fisher_samples": 8},
        max_length=128,
        per_device_train_batch_size=4,
        max_steps=steps,
        lr_scheduler_type="constant",  # so that stopping at step 2 and going on to 4 changes no learning rate
        learning_rate=1e-2,
        logging_steps=1,
        save_steps=2,
        seed=3,
    )


def test_full_ft_ewc_l2sp_fisher_saved_and_reused_on_resume(tiny_model_dir, data, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    run_train(_ewc_config(tiny_model_dir, data, reference, steps=4))

    run = tmp_path / "resumed"
    run_train(_ewc_config(tiny_model_dir, data, run, steps=2))  # stops with checkpoint-2 in place
    fisher = run / FISHER_FILE
    assert fisher.is_file()
    saved = fisher.read_bytes()

    def no_recompute(*args, **kwargs):
        raise AssertionError("the Fisher was recomputed on resume instead of read from the run dir")

    monkeypatch.setattr(regularizers, "diagonal_fisher", no_recompute)
    run_train(_ewc_config(tiny_model_dir, data, run, steps=4))  # resume: auto, from checkpoint-2
    assert fisher.read_bytes() == saved

    logs, ref_logs = _train_logs(run), _train_logs(reference)
    assert [m["step"] for m in logs] == [1, 2, 3, 4]
    # Step 1 starts at the anchor: both penalties are exactly 0, then they grow.
    assert logs[0]["loss/l2sp"] == 0 and logs[0]["loss/ewc"] == 0
    assert logs[-1]["loss/l2sp"] > 0 and logs[-1]["loss/ewc"] > 0
    # Had the resumed run anchored at checkpoint-2's weights, its penalties would restart near 0.
    for mine, ref in zip(logs, ref_logs):
        for key in ("loss", "loss/task", "loss/l2sp", "loss/ewc"):
            assert mine[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-7), (key, mine["step"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "full" and summary["global_step"] == 4
    assert summary["trainable_params"] == summary["total_params"]


def test_asft_preset_with_lora_and_neftune(tiny_model_dir, data, tmp_path):
    """ASFT = `loss: dft` + forward KL to the base on responses, composed with LoRA and NEFTune."""
    from sftlab.train.losses import dft_loss

    run = tmp_path / "asft"
    cfg = TrainConfig(
        model_name_or_path=str(tiny_model_dir),
        train_file=[str(data["sft"])],
        output_dir=str(run),
        preset="asft",
        kl_to_base={"beta": 0.5},  # the one ASFT knob a user retunes; direction and positions stay the paper's
        method="lora",
        lora={"r": 4, "alpha": 8, "target_modules": ["c_attn", "c_fc"]},
        neftune_noise_alpha=5.0,
        packing=True,
        max_length=96,
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=2e-2,
        logging_steps=1,
        eval_fraction=0.1,
        save_strategy="no",
    )
    assert cfg.loss == "dft" and (cfg.kl_to_base.direction, cfg.kl_to_base.on) == ("forward", "response")
    session = prepare_train(cfg)
    trainer = session.trainer
    (kl,) = [r for r in trainer.regularizers if isinstance(r, KLToBase)]
    assert (kl.beta, kl.direction, kl.on) == (0.5, "forward", "response")
    assert kl.base_copy is None  # LoRA: the base is the adapter switched off
    assert trainer.loss_fn is dft_loss
    out = finish_train(session)

    logs = _train_logs(run)
    assert [m["step"] for m in logs] == [1, 2, 3, 4]
    for m in logs:
        assert m["loss"] == pytest.approx(m["loss/task"] + m["loss/kl_to_base"], rel=1e-4, abs=1e-6)
        assert m["loss/kl_to_base"] > 0 and m["neftune/alpha"] == 5.0
    # DFT, not cross-entropy: at random init p(y) is about 1/V, so -p log p is about ln(V)/V = 0.004,
    # where cross-entropy would be about ln(V) = 7.6.
    assert 0 < logs[0]["loss/task"] < 0.05
    evals = [m for m in _metrics(run) if "eval_loss" in m]
    # Evaluation: eval_loss is cross-entropy (near ln V here), eval_objective the DFT loss.
    assert all(m["eval_loss"] > 5 and m["eval_objective"] < 0.05 for m in evals)
    assert out == run / "adapter" and (out / "adapter_config.json").is_file()
    saved = (run / "config.yaml").read_text()
    assert "preset: asft" in saved and "loss: dft" in saved
    # The saved config, preset and its expansion together, reads back to the same config.
    from sftlab.config import load_config

    assert load_config(TrainConfig, run / "config.yaml") == cfg


def test_asft_preset_refuses_keys_set_against_it():
    from sftlab.config import build_config
    from sftlab.errors import UserError

    base = {"model_name_or_path": "m", "train_file": "t", "preset": "asft"}
    for bad in ({"loss": "gem"}, {"kl_to_base": {"direction": "reverse"}}, {"kl_to_base": {"on": "all"}}):
        with pytest.raises(UserError, match="preset asft sets"):
            build_config(TrainConfig, {**base, **bad})
    assert build_config(TrainConfig, {**base, "loss": "dft"}).kl_to_base.beta == 0.1
