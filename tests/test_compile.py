"""``torch_compile: true``: each transformer block compiled in place, the same training, the same saved model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from sftlab.config import TrainConfig
from sftlab.errors import UserError
from sftlab.recipes.train import finish_train, prepare_train
from sftlab.train.compile import compile_blocks

from conftest import needs_on_this_machine


def test_compile_blocks_compiles_each_block_of_the_stack_and_nothing_else(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert compile_blocks(model) == model.config.num_hidden_layers
    assert all(block._compiled_call_impl is not None for block in model.model.layers)
    eager = [m for m in model.modules() if m not in set(model.model.layers) and m._compiled_call_impl is not None]
    assert eager == []  # embedding, final norm and head stay eager
    assert not any("_orig_mod" in name for name in model.state_dict())  # in place: the names are unchanged


def test_a_model_without_repeated_blocks_compiles_nothing():
    assert compile_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())) == 0


@pytest.mark.parametrize(("kw", "message"), [
    ({"fsdp": {}}, "torch_compile is not tested with fsdp"),
    ({"neftune_noise_alpha": 5.0, "neftune_layers": [0, 1]}, "NEFTune on the input embeddings only"),
])
def test_torch_compile_is_refused_where_it_is_known_to_fail_or_untested(kw, message):
    with pytest.raises(ValidationError, match=message):
        TrainConfig(model_name_or_path="m", train_file=["x.json"], torch_compile=True, **kw)


def _train(model_dir: Path, data: Path, out: Path, compiled: bool) -> list[float]:
    cfg = TrainConfig(model_name_or_path=str(model_dir), train_file=[str(data)], output_dir=str(out),
                      max_length=128, packing=True, per_device_train_batch_size=2, max_steps=4, logging_steps=1,
                      save_strategy="no", learning_rate=3e-3, dtype="float32", seed=1, torch_compile=compiled,
                      # eager attention always takes a mask tensor (SDPA sometimes none), so one graph serves all
                      attn_implementation="eager")
    session = prepare_train(cfg)
    blocks = session.trainer.model.model.layers
    assert all((block._compiled_call_impl is not None) == compiled for block in blocks)
    finish_train(session)
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def test_a_compiled_run_trains_and_saves_what_an_eager_run_does(tiny_llama_dir, shared_data, tmp_path):
    if shutil.which("g++") is None and shutil.which("c++") is None:
        # inductor generates C++ for the CPU and needs a compiler to build it
        needs_on_this_machine("a C++ compiler", "torch.compile on CPU builds C++; install g++")
    records = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[:16]
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(records))
    eager = _train(tiny_llama_dir, data, tmp_path / "eager", compiled=False)
    compiled = _train(tiny_llama_dir, data, tmp_path / "compiled", compiled=True)
    assert len(eager) == len(compiled) == 4
    assert eager[-1] < eager[0]  # the comparison is over a moving curve
    assert compiled == pytest.approx(eager, rel=1e-4)
    weights = {run: _weights(tmp_path / run / "model") for run in ("eager", "compiled")}
    assert weights["compiled"].keys() == weights["eager"].keys()
    # What training changed, run against run. Adam divides by each gradient's own scale, so a weight whose
    # gradient is near zero can take a different step on a rounding difference: single elements are no
    # measure; the whole update is.
    start = _weights(tiny_llama_dir)
    update = {run: torch.cat([(w[name] - start[name]).flatten() for name in start]) for run, w in weights.items()}
    assert update["eager"].norm() > 0
    assert (update["compiled"] - update["eager"]).norm() / update["eager"].norm() < 0.01


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    with safe_open(model_dir / "model.safetensors", "pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def _small_config(model_dir: Path, shared_data: Path, tmp_path: Path) -> TrainConfig:
    records = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[:4]
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(records))
    return TrainConfig(model_name_or_path=str(model_dir), train_file=[str(data)], output_dir=str(tmp_path / "o"),
                       max_length=128, max_steps=1, save_strategy="no", torch_compile=True)


def test_a_model_with_nothing_to_compile_is_a_user_error(tiny_llama_dir, shared_data, tmp_path, monkeypatch):
    from sftlab.recipes import train

    monkeypatch.setattr(train, "compile_blocks", lambda model: 0)
    with pytest.raises(UserError, match="no list of repeated blocks"):
        prepare_train(_small_config(tiny_llama_dir, shared_data, tmp_path))


def test_a_compile_failure_is_a_user_error_that_names_the_way_out(tiny_llama_dir, shared_data, tmp_path,
                                                                   monkeypatch):
    import torch._dynamo.exc

    session = prepare_train(_small_config(tiny_llama_dir, shared_data, tmp_path))

    def fail(**kwargs):
        raise torch._dynamo.exc.TorchDynamoException("inductor could not build a kernel\nlong trace")

    monkeypatch.setattr(session.trainer, "train", fail)
    with pytest.raises(UserError, match=r"compiling the blocks failed \(TorchDynamoException: inductor could not "
                                        r"build a kernel\); set torch_compile: false"):
        finish_train(session)
