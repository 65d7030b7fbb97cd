"""Training methods (sftlab.train.adapters), dropout override and adapter merging."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from sftlab.config import TrainConfig
from sftlab.errors import UserError
from sftlab.models.load import adapter_is_mergeable, load_model
from sftlab.train.adapters import (
    apply_method,
    detect_target_modules,
    is_peft_model,
    linear_module_names,
    merge_adapter,
)


def _cfg(model_dir: Path, **kw) -> TrainConfig:
    return TrainConfig(model_name_or_path=str(model_dir), train_file=["unused.jsonl"], **kw)


def _fresh(model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(str(model_dir))


def _trained_names(model: torch.nn.Module) -> set[str]:
    """Names of parameters that got a gradient from one forward/backward."""
    ids = torch.randint(2, 100, (2, 12))
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def _adapted(model: torch.nn.Module) -> set[str]:
    """Leaf names of the modules that carry a LoRA adapter."""
    return {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_A" in n}


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_llama_dir"])
def test_lora_default_adapts_all_linear_layers_but_the_head(fixture, request):
    model_dir = request.getfixturevalue(fixture)
    cfg = _cfg(model_dir, method="lora")
    assert cfg.lora.target_modules == "all-linear"
    model = apply_method(cfg, _fresh(model_dir))
    expected = {"c_attn", "c_fc", "c_proj"} if fixture == "tiny_model_dir" else {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    # PEFT resolves "all-linear" itself; sftlab's mirror of its rule names the same layers.
    assert _adapted(model) == expected == set(linear_module_names(_fresh(model_dir)))
    assert not any("lm_head" in n or "wte" in n for n, p in model.named_parameters() if p.requires_grad)
    # GPT-2's Conv1D weights are stored (in, out): PEFT must be told to transpose.
    assert model.peft_config["default"].fan_in_fan_out == (fixture == "tiny_model_dir")


def test_peft_default_takes_peft_table(tiny_llama_dir):
    model = apply_method(_cfg(tiny_llama_dir, method="lora", lora={"target_modules": "peft-default"}),
                         _fresh(tiny_llama_dir))
    assert _adapted(model) == {"q_proj", "v_proj"}
    with pytest.raises(ValueError, match="target_modules"):
        _cfg(tiny_llama_dir, method="lora", lora={"target_modules": "all"})


def test_target_modules_follow_peft_table(tiny_model_dir, tiny_llama_dir):
    assert detect_target_modules(_fresh(tiny_model_dir)) == ["c_attn"]
    assert detect_target_modules(_fresh(tiny_llama_dir)) == ["q_proj", "v_proj"]


def test_unknown_architecture_falls_back_to_all_linear_but_head(tiny_model_dir):
    model = _fresh(tiny_model_dir)
    model.config.model_type = "not-in-peft-table"
    # GPT-2's Conv1D layers: attention in/out and both MLP matrices; never the (tied) output head.
    assert detect_target_modules(model) == ["c_attn", "c_fc", "c_proj"]
    assert "lm_head" not in linear_module_names(model)


@pytest.mark.parametrize("method", ["lora", "dora", "ia3", "prefix", "prompt"])
def test_peft_methods_train_only_their_weights(tiny_model_dir, method):
    model = apply_method(_cfg(tiny_model_dir, method=method), _fresh(tiny_model_dir))
    assert is_peft_model(model)
    # Which tensors get a gradient (LoRA's A gets none while B is still zero, hence a subset check).
    trained = _trained_names(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and trained <= trainable
    base_weights = {n for n in trainable if "base_layer" in n or n.endswith("wte.weight")}
    assert not base_weights, f"{method} trains base weights: {base_weights}"


def test_lora_settings_reach_peft(tiny_llama_dir):
    lora = {"r": 4, "alpha": 8, "target_modules": ["o_proj"], "use_rslora": True}
    cfg = _cfg(tiny_llama_dir, method="lora", lora=lora)
    model = apply_method(cfg, _fresh(tiny_llama_dir))
    peft_cfg = model.peft_config["default"]
    assert peft_cfg.r == 4 and peft_cfg.lora_alpha == 8 and peft_cfg.use_rslora
    assert set(peft_cfg.target_modules) == {"o_proj"}
    assert _adapted(model) == {"o_proj"}


def test_lora_target_typo_is_a_user_error(tiny_model_dir):
    with pytest.raises(UserError, match=r"match no module.*c_attn"):
        apply_method(_cfg(tiny_model_dir, method="lora", lora={"target_modules": ["q_porj"]}), _fresh(tiny_model_dir))


def test_freeze_trains_top_layers_and_named_modules(tiny_model_dir):
    cfg = _cfg(tiny_model_dir, method="freeze", freeze={"trainable_top_k_layers": 1, "trainable_modules": ["ln_f"]})
    model = apply_method(cfg, _fresh(tiny_model_dir))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # The tiny GPT-2 has 2 blocks: only block 1 and the final layer norm train.
    top = ("transformer.h.1.", "transformer.ln_f.")
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(top)}
    assert _trained_names(model) <= trainable


def test_freeze_errors(tiny_model_dir):
    with pytest.raises(UserError, match="has 2 blocks"):
        apply_method(
            _cfg(tiny_model_dir, method="freeze", freeze={"trainable_top_k_layers": 5}), _fresh(tiny_model_dir)
        )
    with pytest.raises(UserError, match="match no parameter"):
        apply_method(
            _cfg(tiny_model_dir, method="freeze", freeze={"trainable_top_k_layers": 0, "trainable_modules": ["nope"]}),
            _fresh(tiny_model_dir),
        )


def test_dropout_override(tiny_model_dir, tiny_llama_dir):
    gpt2 = load_model(str(tiny_model_dir), dropout=0.25)
    assert (gpt2.config.resid_pdrop, gpt2.config.embd_pdrop, gpt2.config.attn_pdrop) == (0.25, 0.25, 0.25)
    assert all(m.p == 0.25 for m in gpt2.modules() if isinstance(m, torch.nn.Dropout))
    llama = load_model(str(tiny_llama_dir), dropout=0.3)
    assert llama.config.attention_dropout == 0.3


def test_merge_adapter_equals_peft_model(tiny_model_dir, tmp_path):
    torch.manual_seed(0)
    model = apply_method(_cfg(tiny_model_dir, method="lora"), _fresh(tiny_model_dir))
    with torch.no_grad():  # LoRA starts as a no-op (B = 0): move B so the merge has something to fold in
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(str(tmp_path / "adapter"))
    merged_dir = merge_adapter(tmp_path / "adapter", tmp_path / "merged")

    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir))
    assert not is_peft_model(merged)
    ids = torch.randint(2, 100, (2, 10))
    model.eval()
    with torch.no_grad():
        want, got = model(input_ids=ids).logits, merged(input_ids=ids).logits
        base = _fresh(tiny_model_dir)(input_ids=ids).logits
    assert torch.allclose(want, got, atol=1e-5)
    assert not torch.allclose(base, got, atol=1e-3)  # the adapter really changed the model
    assert (merged_dir / "tokenizer_config.json").is_file()


def test_only_weight_changing_adapters_count_as_mergeable(tiny_model_dir, tmp_path):
    # The audit folds mergeable adapters in before generating, and loads the others as PEFT models.
    for method, mergeable in (("lora", True), ("prompt", False)):
        apply_method(_cfg(tiny_model_dir, method=method), _fresh(tiny_model_dir)).save_pretrained(str(tmp_path / method))
        assert adapter_is_mergeable(tmp_path / method) is mergeable


def test_merge_refuses_what_cannot_merge(tiny_model_dir, tmp_path):
    model = apply_method(_cfg(tiny_model_dir, method="prompt"), _fresh(tiny_model_dir))
    model.save_pretrained(str(tmp_path / "prompt"))
    with pytest.raises(UserError, match="cannot be merged"):
        merge_adapter(tmp_path / "prompt", tmp_path / "out")
    with pytest.raises(UserError, match="not a PEFT adapter"):
        merge_adapter(tiny_model_dir, tmp_path / "out")
