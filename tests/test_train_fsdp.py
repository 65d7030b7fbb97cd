"""FSDP2 (``fully_shard``) through the Trainer: ``torchrun --nproc_per_node 2`` on CPU with gloo.

The 2-rank run is killed (SIGKILL) after its first checkpoint and resumed; its loss curve, every loss
component, and the saved model must match a single process trained on the same global batch. The
regularizers' per-parameter state must be split between the ranks. The engine config mapping
(FSDP, DeepSpeed, attention kernel) is checked without a launch.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from sftlab.config import TrainConfig, build_config
from sftlab.errors import UserError
from sftlab.recipes.train import run_train
from sftlab.train import distributed
from sftlab.train.trainer import make_training_arguments

STEPS = 6
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, shared_data) -> dict[str, Path]:
    """32 Alpaca records (train), and plain text for the EWC Fisher and for replay."""
    out = tmp_path_factory.mktemp("fsdp_data")
    records = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[400:432]
    (out / "train.json").write_text(json.dumps(records))
    lines = [l for l in (shared_data / "tinyshakespeare" / "input.txt").read_text().splitlines() if l.strip()]
    (out / "fisher.txt").write_text("\n".join(lines[:40]))
    (out / "replay.txt").write_text("\n".join(lines[1000:1200]))
    return {"train": out / "train.json", "fisher": out / "fisher.txt", "replay": out / "replay.txt"}


def _config(model_dir: Path, corpora: dict[str, Path], out: Path, batch: int, **extra) -> dict:
    # No dropout and a constant learning rate: the curve is then a function of the data and weights alone,
    # and a resumed run's schedule cannot differ from an uninterrupted one's.
    return dict(
        model_name_or_path=str(model_dir), train_file=[str(corpora["train"])], output_dir=str(out),
        max_length=96, per_device_train_batch_size=batch, max_steps=STEPS, learning_rate=3e-3,
        lr_scheduler_type="constant", logging_steps=1, save_steps=2, dropout=0.0, seed=0, **extra,
    )


def _torchrun(*args: str) -> list[str]:
    # --standalone: a local rendezvous on a free port, so parallel test runs do not collide.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


def _train(config: Path) -> list[str]:
    return _torchrun("-m", "sftlab.cli", "--offline", "train", str(config))


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parent.parent / "src")
    path = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def _run_to_end(config: Path) -> str:
    proc = subprocess.Popen(_train(config), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
        raise
    assert proc.returncode == 0, stderr[-3000:]
    return stderr


def _kill_after_checkpoint(config: Path, run: Path, step: int) -> None:
    """Launch with every rank pausing once ``checkpoint-<step>`` is in place (tests/torchrun_pause.py), and
    SIGKILL torchrun with both workers there: mid-run, whatever the machine's load."""
    pause = Path(__file__).with_name("torchrun_pause.py")
    proc = subprocess.Popen(_torchrun(str(pause), str(step), str(config)), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (run / "checkpoints" / f"checkpoint-{step}").is_dir():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, f"no checkpoint-{step} within 300 s"
            time.sleep(0.05)
        time.sleep(0.5)  # both ranks are then asleep in on_save, past the checkpoint's last barrier
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        for mark in config.parent.glob("paused.*"):  # the workers, in sessions of their own (torchrun_pause.py)
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(mark.suffix[1:]), signal.SIGKILL)
            mark.unlink()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"checkpoint-{step}"]
    assert not (run / "summary.json").exists()


def _curve(run: Path) -> dict[int, dict[str, float]]:
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in logs if "loss" in m]
    assert [m["step"] for m in train] == list(range(1, STEPS + 1)), "every step logged exactly once"
    return {m["step"]: {k: v for k, v in m.items() if k == "loss" or k.startswith("loss/")} for m in train}


@pytest.mark.slow
@pytest.mark.parametrize(("engine", "method"), [("fsdp", "full"), ("fsdp", "lora"), ("ddp", "full")])
def test_two_ranks_match_one_process(engine, method, tiny_model_dir, corpora, tmp_path):
    """FSDP2 runs are killed after their first checkpoint and resumed (from a full state dict for full FT,
    a sharded one for LoRA); the DDP run goes straight through."""
    if method == "full":
        # Full fine-tuning with both weight-space remedies, the KL to a frozen base copy, GEM, replay, packing.
        remedies = dict(
            l2sp={"lambda": 0.5}, ewc={"lambda": 100.0, "fisher_corpus": str(corpora["fisher"]), "fisher_samples": 8},
            kl_to_base={"beta": 0.5}, loss="gem", replay={"corpus": str(corpora["replay"]), "ratio": 0.25},
            packing=True,
        )
    else:
        remedies = dict(method="lora", kl_to_base={"beta": 0.5})  # the KL base: the model with its adapter off
    reference = tmp_path / "one_process"
    run_train(TrainConfig(**_config(tiny_model_dir, corpora, reference, batch=4, **remedies)))

    run = tmp_path / engine
    config = tmp_path / f"{engine}.yaml"
    # Full FT checkpoints one gathered state dict; LoRA's checkpoints are sharded (one file per rank).
    layout = "FULL_STATE_DICT" if method == "full" else "SHARDED_STATE_DICT"
    engine_keys = {"fsdp": {"state_dict_type": layout}} if engine == "fsdp" else {}
    config.write_text(yaml.safe_dump(_config(tiny_model_dir, corpora, run, batch=2, **engine_keys, **remedies)))
    if engine == "fsdp":
        _kill_after_checkpoint(config, run, step=2)
        # accelerate's FSDP layouts: one gathered file, or a dir of per-rank shards (torch.distributed.checkpoint).
        saved = "pytorch_model_fsdp.bin" if layout == "FULL_STATE_DICT" else "pytorch_model_fsdp_0"
        assert (run / "checkpoints" / "checkpoint-2" / saved).exists()
    _run_to_end(config)  # for FSDP, resume: auto picks up checkpoint-2

    expected, got = _curve(reference), _curve(run)
    names = {"loss", "loss/task", "loss/kl_to_base"} | ({"loss/l2sp", "loss/ewc"} if method == "full" else set())
    for step in range(1, STEPS + 1):
        assert set(got[step]) == set(expected[step]) == names
        for name in names:
            assert got[step][name] == pytest.approx(expected[step][name], abs=TOLERANCE), (step, name)
    assert expected[STEPS]["loss/kl_to_base"] > 1e-4, "the KL term is live, so matching it means something"

    # The result is a plain transformers (or PEFT) dir that computes what the one-process model computes.
    # (Weights are not compared one by one: Adam turns the float noise of gradients that are 0 in exact
    # arithmetic, such as the attention key bias's, into steps of +-lr that change no output.)
    ours, theirs = _load_plain(run, method, tiny_model_dir), _load_plain(reference, method, tiny_model_dir)
    ids = torch.tensor([[(7 * i + 3) % 2000 + 10 for i in range(48)], [(11 * i + 5) % 2000 + 10 for i in range(48)]])
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).logits, theirs(input_ids=ids).logits, atol=TOLERANCE, rtol=0)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == STEPS

    per_rank = summary["regularizer_state_bytes_per_rank"]
    single = json.loads((reference / "summary.json").read_text())["regularizer_state_bytes_per_rank"]
    assert len(per_rank) == 2 and len(single) == 1
    if method == "lora":
        assert per_rank == [0, 0] and single == [0]  # LoRA's KL base costs no memory
        return
    params = sum(p.numel() for p in ours.parameters())
    assert single[0] == 3 * 4 * params  # theta_0, sqrt(F) and the frozen base copy, fp32
    if engine == "ddp":
        assert per_rank == [single[0], single[0]]  # DDP replicates everything
    else:
        # Each rank holds its own part of the anchors, the Fisher and the base copy, and nothing twice.
        assert sum(per_rank) == single[0]
        assert all(0.4 * single[0] <= b <= 0.6 * single[0] for b in per_rank), per_rank


def _load_plain(run: Path, method: str, base: Path) -> torch.nn.Module:
    """The run's result through transformers (and peft for an adapter) alone, no sftlab code."""
    from transformers import AutoModelForCausalLM

    if method == "full":
        return AutoModelForCausalLM.from_pretrained(str(run / "model")).eval()
    from peft import PeftModel

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(run / "adapter")).eval()


@pytest.mark.slow
def test_fsdp_neftune_noises_the_sharded_embeddings(tiny_model_dir, corpora, tmp_path):
    """NEFTune draws its noise on each rank, so no curve can match; its hook must still act under FSDP."""
    clean = tmp_path / "clean"
    run_train(TrainConfig(**{**_config(tiny_model_dir, corpora, clean, batch=4), "max_steps": 1}))
    run = tmp_path / "neftune"
    config = tmp_path / "neftune.yaml"
    config.write_text(yaml.safe_dump({**_config(tiny_model_dir, corpora, run, batch=2, fsdp={},
                                                neftune_noise_alpha=50.0), "max_steps": 2}))
    _run_to_end(config)
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in logs if "loss" in m]
    assert [m["step"] for m in train] == [1, 2]
    assert train[0]["neftune/alpha"] == 50.0 and train[0]["neftune/noised_forwards"] >= 1
    clean_loss = next(m["loss"] for m in map(json.loads, (clean / "metrics.jsonl").read_text().splitlines())
                      if "loss" in m)
    assert abs(train[0]["loss"] - clean_loss) > 1e-3, "noised embeddings change the first step's loss"
    assert (run / "model" / "model.safetensors").is_file()


# --------------------------------------------------------------------------------------------------
# Config mapping (no launch)


def _train_cfg(tmp_path: Path, **extra) -> TrainConfig:
    return build_config(TrainConfig, dict(model_name_or_path="m", train_file=["d.json"], output_dir=str(tmp_path),
                                          **extra))


def test_fsdp_keys_become_the_trainers_fsdp2_plugin(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = _train_cfg(tmp_path, fsdp={"reshard_after_forward": False, "transformer_layer_cls_to_wrap": ["GPT2Block"],
                                     "state_dict_type": "SHARDED_STATE_DICT"})
    kwargs = distributed.engine_arguments(cfg)
    assert kwargs["fsdp"] is True
    monkeypatch.delenv("WORLD_SIZE")  # TrainingArguments would start a process group for 2 ranks
    plugin = make_training_arguments(output_dir=str(tmp_path), **kwargs).fsdp_plugin_args
    assert plugin["fsdp_version"] == 2
    assert plugin["reshard_after_forward"] is False
    assert plugin["state_dict_type"] == "SHARDED_STATE_DICT"
    assert plugin["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert plugin["transformer_cls_names_to_wrap"] == "GPT2Block"


def test_fsdp_in_one_process_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(UserError, match="torchrun"):
        distributed.engine_arguments(_train_cfg(tmp_path, fsdp={}))


def test_no_engine_keys_change_nothing(tmp_path):
    assert distributed.engine_arguments(_train_cfg(tmp_path)) == {}


def test_fsdp_and_deepspeed_are_exclusive(tmp_path):
    with pytest.raises(UserError, match="exclusive"):
        _train_cfg(tmp_path, fsdp={}, deepspeed={"stage": 2})


def test_deepspeed_zero3_config(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: object())  # as if installed
    cfg = _train_cfg(tmp_path, deepspeed={"stage": 3, "offload_optimizer": True, "offload_param": True})
    ds = distributed.engine_arguments(cfg)["deepspeed"]
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # the final dir loads in transformers
    # Batch size, accumulation, clipping and precision come from TrainingArguments, never set twice.
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert ds[key] == "auto"
    assert ds["bf16"] == {"enabled": "auto"}


def test_deepspeed_zero2_keeps_parameters_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: object())
    ds = distributed.engine_arguments(_train_cfg(tmp_path, deepspeed={"stage": 2}))["deepspeed"]
    assert ds["zero_optimization"]["stage"] == 2
    assert "offload_param" not in ds["zero_optimization"]
    with pytest.raises(UserError, match="offload_param needs stage: 3"):
        _train_cfg(tmp_path, deepspeed={"stage": 2, "offload_param": True})


def test_deepspeed_own_config_file_is_passed_as_is(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: object())
    own = tmp_path / "ds.json"
    own.write_text("{}")
    assert distributed.engine_arguments(_train_cfg(tmp_path, deepspeed={"config_file": str(own)})) == {
        "deepspeed": str(own)
    }
    with pytest.raises(UserError, match="not found"):
        distributed.engine_arguments(_train_cfg(tmp_path, deepspeed={"config_file": str(tmp_path / "no.json")}))


def test_deepspeed_zero3_refuses_remedies_that_need_whole_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: object())
    ewc = {"fisher_corpus": "f.txt"}
    with pytest.raises(UserError, match="stage 3 does not support l2sp, ewc"):
        distributed.engine_arguments(_train_cfg(tmp_path, deepspeed={"stage": 3}, l2sp={}, ewc=ewc))
    with pytest.raises(UserError, match="kl_to_base"):
        distributed.engine_arguments(_train_cfg(tmp_path, deepspeed={"stage": 3}, kl_to_base={}))
    # LoRA's KL base is the model with its adapter off: no copy, so ZeRO-3 can run it.
    lora_kl = _train_cfg(tmp_path, deepspeed={"stage": 3}, kl_to_base={}, method="lora")
    assert distributed.engine_arguments(lora_kl)["deepspeed"]["zero_optimization"]["stage"] == 3


def test_deepspeed_missing_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="deepspeed package is not installed"):
        distributed.engine_arguments(_train_cfg(tmp_path, deepspeed={"stage": 2}))


def test_unavailable_attention_kernel_is_a_user_error(tiny_model_dir, corpora, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("flash-attention may be usable on this machine")
    cfg = TrainConfig(**_config(tiny_model_dir, corpora, tmp_path / "run", batch=2,
                                attn_implementation="flash_attention_2"))
    with pytest.raises(UserError, match="attn_implementation: flash_attention_2"):
        run_train(cfg)


def test_setup_table_names_the_engine(tmp_path):
    from sftlab.recipes.train_console import describe_engine

    assert describe_engine(_train_cfg(tmp_path), 1) is None
    assert describe_engine(_train_cfg(tmp_path), 2) == "DDP over 2 ranks"
    assert describe_engine(_train_cfg(tmp_path, fsdp={}), 2) == "FSDP2 over 2 ranks (checkpoints: full_state_dict)"
    assert describe_engine(_train_cfg(tmp_path, deepspeed={"stage": 3}), 4) == "DeepSpeed ZeRO-3 over 4 ranks"


def test_shard_helpers_are_identities_in_one_process():
    """Without a process group nothing is sharded: state stays whole and sums stay local."""
    param = torch.nn.Parameter(torch.randn(5, 3))
    full = torch.randn(5, 3, dtype=torch.float64)
    assert torch.equal(distributed.shard_like(full, param), full.float())
    value = (param**2).sum()
    assert distributed.sum_over_shards(value, [param]) is value
    count, ranks = distributed.count_over_ranks(torch.tensor(7))
    assert (int(count), ranks) == (7, 1)
    tied = torch.randn(4, 2)
    assert distributed.local_bytes([tied, tied, torch.zeros(3)]) == 4 * 2 * 4 + 3 * 4  # a shared tensor once
    assert distributed.per_rank(123) == [123]
