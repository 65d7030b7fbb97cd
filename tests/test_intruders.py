"""Intruder-dimension reduction: sftlab's saved adapter is what PEFT's reduce_intruder_dimension makes, and loads;
the CLI and the sweep's `intruders:` strategy step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.intruders import reduce_intruder_dimension
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from sftlab.cli import main
from sftlab.errors import UserError
from sftlab.models.load import load_model
from sftlab.models.reference import ModelRef
from sftlab.train.intruders import RECORD_FILE, reduce_intruders

MODULES = ["q_proj", "v_proj"]


@pytest.fixture
def lora_adapter(tiny_llama_dir: Path, tmp_path: Path) -> Path:
    """A LoRA adapter whose update dominates the base weights: its top singular vectors are new directions."""
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)),
                           LoraConfig(r=4, lora_alpha=8, target_modules=MODULES, init_lora_weights=False))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(30.0)
    adapter = tmp_path / "adapter"
    model.save_pretrained(str(adapter))
    return adapter


def _peft_reduced(adapter: Path, base: Path, **settings) -> dict[str, torch.Tensor]:
    """PEFT's function applied by hand to a fresh load: the reduced adapter's LoRA weights, by short name."""
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(adapter))
    reduce_intruder_dimension(model, logging_sink=None, **settings)
    return {name.replace(".intruder_reduced", ""): p.detach().clone()
            for name, p in model.named_parameters() if ".intruder_reduced." in name}


def _saved(adapter: Path) -> dict[str, torch.Tensor]:
    return load_file(adapter / "adapter_model.safetensors")


def test_reduced_adapter_is_peft_s_and_loads(lora_adapter: Path, tiny_llama_dir: Path, tmp_path: Path) -> None:
    out = reduce_intruders(lora_adapter, tmp_path / "reduced", top_k=4, threshold_epsilon=0.5, mitigation_lambda=0.25)
    record = json.loads((out / RECORD_FILE).read_text())
    assert sum(record["intruders_per_layer"].values()) > 0  # this adapter has intruders
    assert len(record["intruders_per_layer"]) == 2 * len(MODULES)  # every adapted layer was examined
    want = _peft_reduced(lora_adapter, tiny_llama_dir, top_k=4, threshold_epsilon=0.5, mitigation_lambda=0.25)
    got, before = _saved(out), _saved(lora_adapter)
    assert len(want) == len(got) == len(before) == 4 * len(MODULES)
    for key, tensor in want.items():
        assert torch.allclose(got[key], tensor, atol=1e-6), key
    assert any(not torch.allclose(got[k], before[k]) for k in got)  # and it changed the adapter

    base = load_model(str(tiny_llama_dir), dtype=torch.float32)
    tuned, reduced = (load_model(str(d), dtype=torch.float32, merge_adapter=True) for d in (lora_adapter, out))
    ids = torch.arange(1, 17).unsqueeze(0)
    with torch.no_grad():
        logits = [m(input_ids=ids).logits for m in (base, tuned, reduced)]
    # Three quarters of each intruder removed: the model comes back towards its base.
    assert (logits[2] - logits[0]).norm() < (logits[1] - logits[0]).norm()


def test_lambda_one_keeps_the_update(lora_adapter: Path, tmp_path: Path) -> None:
    """mitigation_lambda 1 keeps every intruder whole: the refactored B A equals the original update."""
    out = reduce_intruders(lora_adapter, tmp_path / "same", top_k=4, mitigation_lambda=1.0)
    got, before = _saved(out), _saved(lora_adapter)
    for a_key in (k for k in got if "lora_A" in k):
        b_key = a_key.replace("lora_A", "lora_B")
        assert torch.allclose(got[b_key] @ got[a_key], before[b_key] @ before[a_key], atol=1e-4)


def test_cli_and_bad_input(lora_adapter: Path, tiny_llama_dir: Path, tmp_path: Path) -> None:
    assert main(["intruders", "--adapter", str(lora_adapter), "--out", str(tmp_path / "cli"), "--top-k", "4"]) == 0
    assert (tmp_path / "cli" / "adapter_config.json").is_file()
    with pytest.raises(UserError, match="not a PEFT adapter"):
        reduce_intruders(tiny_llama_dir, tmp_path / "x")
    with pytest.raises(UserError, match="mitigation_lambda"):
        reduce_intruders(lora_adapter, tmp_path / "x", mitigation_lambda=1.5)
    assert main(["intruders", "--adapter", str(tiny_llama_dir), "--out", str(tmp_path / "y")]) == 2


def _sweep_file(tmp_path: Path, strategies: list[dict]) -> Path:
    data = {"base_model": "base", "out": str(tmp_path / "sweep"), "train": {"train_file": "train.jsonl"},
            "strategies": strategies, "audit": {"prompts": "prompts.jsonl"}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_sweep_strategy_reduces_its_lora_source(lora_adapter: Path, tmp_path: Path, monkeypatch) -> None:
    """``intruders: {source: lora}`` runs after its source, reads the source's adapter and audits the result."""
    import sftlab.recipes.audit as audit_recipe
    import sftlab.recipes.sweep as sweep

    strategies = [{"name": "fix", "intruders": {"source": "lora", "top_k": 4, "mitigation_lambda": 0.25}},
                  {"name": "lora", "train": {"method": "lora"}}]
    cfg = sweep.load_sweep(str(_sweep_file(tmp_path, strategies)))
    trained, fixed = sweep.plan(cfg)
    assert (trained.strategy.name, fixed.strategy.name) == ("lora", "fix")
    audited = {}

    def fake_audit(acfg, extra_sections=()):
        audited.update(acfg.tuned)
        Path(acfg.out).mkdir(parents=True)
        (Path(acfg.out) / "report.json").write_text(json.dumps({"base": "base", "models": {}, "summary": [],
                                                                 "sections": {}}))

    monkeypatch.setattr(audit_recipe, "run_audit", fake_audit)
    monkeypatch.setattr(sweep, "row_from_report", lambda report, name: {})
    source_row = {"model_dir": str(lora_adapter), "train_seconds": 2.0, "peak_memory_mb": 3.0, "trainable_params": 4}
    base = ModelRef("base", "base", "fingerprint")
    row = sweep.run_one(cfg, fixed, base, {("lora", 0): source_row}, ())
    assert audited == {"fix/seed0": str(fixed.run_dir / "adapter")}
    assert json.loads((fixed.run_dir / "adapter" / RECORD_FILE).read_text())["mitigation_lambda"] == 0.25
    assert row["train_seconds"] > 2.0 and row["trainable_params"] == 4
    # Its settings hash covers the step's settings and its source's.
    other = sweep.load_sweep(str(_sweep_file(tmp_path, [{**strategies[0], "intruders": {"source": "lora"}},
                                                        strategies[1]])))
    assert sweep.run_settings(cfg, fixed, base) != sweep.run_settings(other, sweep.plan(other)[1], base)


@pytest.mark.parametrize(("strategies", "message"), [
    ([{"name": "fix", "intruders": {"source": "full"}}, {"name": "full"}], "not a LoRA strategy"),
    ([{"name": "fix", "intruders": {"source": "gone"}}], "not a trained strategy"),
    ([{"name": "fix", "intruders": {"source": "a"}, "train": {"method": "lora"}}, {"name": "a"}], "no `train` overlay"),
])
def test_bad_intruder_strategies_are_user_errors(tmp_path: Path, strategies: list[dict], message: str) -> None:
    import sftlab.recipes.sweep as sweep

    with pytest.raises(UserError, match=message):
        sweep.load_sweep(str(_sweep_file(tmp_path, strategies)))
