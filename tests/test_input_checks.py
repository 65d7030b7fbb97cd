"""Inputs that reach the filesystem or a device: override types, device names, pickled weights."""

from __future__ import annotations

import shutil

import pytest
import torch

from sftlab.config import AuditConfig, SweepConfig, TrainConfig, load_config, parse_overrides
from sftlab.errors import UserError
from sftlab.models.device import resolve_device
from sftlab.models.load import load_model


def test_overrides_take_the_type_of_the_field_they_set() -> None:
    cfg = load_config(TrainConfig, None, ["model_name_or_path=m", "train_file=t.jsonl", "output_dir=1e3",
                                          "learning_rate=3e-4", "eval_file=2024", "max_steps=1e2", "packing=true",
                                          "ewc.lambda=1e-2", "ewc.fisher_corpus=1.5"])
    assert cfg.output_dir == "1e3" and cfg.eval_file == "2024"  # text fields keep the text as typed
    assert cfg.learning_rate == 3e-4 and cfg.max_steps == 100 and cfg.packing is True
    assert cfg.ewc is not None and cfg.ewc.lambda_ == 0.01 and cfg.ewc.fisher_corpus == "1.5"  # by alias too
    # A sweep's train and audit overlays are typed by the configs they hold.
    sweep = parse_overrides(["train.output_dir=1e3", "train.learning_rate=3e-4", "audit.out=7", "out=1e3"],
                            SweepConfig)
    assert sweep == {"train": {"output_dir": "1e3", "learning_rate": 3e-4}, "audit": {"out": "7"}, "out": "1e3"}
    assert parse_overrides(["prompts=1e3", "sampling.temperature=7e-1", "max_prompts="], AuditConfig) == {
        "prompts": "1e3", "sampling": {"temperature": 0.7}, "max_prompts": None}


def test_device_names_are_checked_against_this_machine(monkeypatch) -> None:
    with pytest.raises(UserError, match="'gpu' is not a device name; use auto"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device("cpu") == "cpu"
    with pytest.raises(UserError, match="cuda is not available on this machine; available: cpu"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(UserError, match="cuda:2 is not available on this machine; available: cpu, cuda:0, cuda:1"):
        resolve_device("cuda:2")


def test_pickled_weights_load_only_when_allowed(tiny_model_dir, tmp_path) -> None:
    model = load_model(str(tiny_model_dir))
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # as transformers 4 saved without safetensors
    with pytest.raises(UserError, match="pytorch_model.bin.*allow_pickle: true.*--allow-pickle"):
        load_model(str(pickled))
    again = load_model(str(pickled), allow_pickle=True)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "../x", ""])
def test_strategy_names_are_one_safe_path_component(name: str) -> None:
    from sftlab.config import build_config

    with pytest.raises(UserError, match="strategies.0"):
        build_config(SweepConfig, {"base_model": "b", "train": {}, "audit": {}, "strategies": [{"name": name}]})
    build_config(SweepConfig, {"base_model": "b", "train": {}, "audit": {}, "strategies": [{"name": "lora_r8+neft-1.5"}]})
