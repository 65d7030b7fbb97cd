"""AuditCallback inside TRL's SFTTrainer on SmolLM2: the logged audit equals a standalone audit of the checkpoint."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch

from sftlab.audit.gate_values import gate_values
from sftlab.errors import UserError
from sftlab.integrations import AuditCallback
from sftlab.integrations.light_audit import LightAuditSettings, audit_config
from sftlab.models.builtin import resolve_model_source
from sftlab.recipes.audit import run_audit
from trl_runs import chat_records, train_with_trl

SETTINGS = LightAuditSettings(chat_prompts=2, num_samples=2, max_new_tokens=8, text_paragraphs=1, forecast_prompts=2,
                              bootstrap_samples=100, max_length=128)


def test_logged_audit_equals_a_standalone_audit_of_the_checkpoint(tmp_path: Path, shared_data: Path) -> None:
    base = resolve_model_source("smollm2-135m-instruct")
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps(r) + "\n" for r in chat_records(shared_data, 8)))
    callback = AuditCallback(every_n_steps=2, sft_data=str(sft), settings=SETTINGS)
    trainer = train_with_trl(base, tmp_path / "full", chat_records(shared_data, 8), lora=False, steps=2, save_steps=2,
                             callbacks=(), attach=callback)
    logged = [e for e in trainer.state.log_history if any(k.startswith("audit/") for k in e)]
    assert len(logged) == 1 and logged[0]["step"] == 2  # through trainer.log: what TensorBoard and W&B receive
    n_params = sum(p.numel() for p in trainer.model.parameters())
    assert callback.base_copy_bytes == 4 * n_params  # one frozen fp32 copy for full fine-tuning

    checkpoint = tmp_path / "full_run" / "checkpoint-2"
    cfg = audit_config(SETTINGS, base, str(checkpoint), str(sft), out=str(tmp_path / "audit"))
    report = json.loads((run_audit(cfg).parent / "report.json").read_text())
    standalone = gate_values(report)["checkpoint-2"]
    for name in ("style_capture", "adherence", "perplexity", "forecast_kl"):
        for part, value in (("", standalone[name].change), ("_low", standalone[name].low),
                            ("_high", standalone[name].high)):
            assert logged[0][f"audit/{name}{part}"] == pytest.approx(value, rel=1e-9, abs=1e-12), name + part
    assert logged[0]["audit/perplexity"] != 0  # the model moved
    assert logged[0]["audit/forecast_kl"] > 0  # and the base did not move with it


def _tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def _patch_like_trl(model: torch.nn.Module) -> None:
    """Replace ``forward`` on the instance with a closure over the original bound method, as TRL does."""
    original_forward = model.forward

    def patched(self: torch.nn.Module, *args: object, **kwargs: object) -> object:
        return original_forward(*args, **kwargs)

    model.forward = types.MethodType(patched, model)


@pytest.mark.parametrize("patch", ["trl_fused_lm_head", "closure"])
def test_base_copy_keeps_its_own_weights_when_the_trainer_patched_forward(patch: str) -> None:
    """The cause of a forecast of 0.0 inside SFTTrainer: a deepcopy of a model whose forward TRL had patched ran
    the trained model's forward, so base and tuned gave the same logits. The copy must compute with its own."""
    from trl.trainer.utils import add_fused_lm_head

    from sftlab.integrations.audit_callback import frozen_copy

    model = _tiny_llama()
    if patch == "trl_fused_lm_head":
        add_fused_lm_head(model)  # what SFTTrainer.__init__ does to the model it trains
    else:
        _patch_like_trl(model)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    base = frozen_copy(model)
    with torch.no_grad():
        before = model(ids).logits
        for p in model.parameters():
            p.add_(0.05)  # a training step, in place as the optimizer takes it
        trained = model(ids).logits
        assert not torch.allclose(trained, before)
        assert torch.equal(base(ids).logits, before)  # the base did not follow the training
    assert not base.training and not any(p.requires_grad for p in base.parameters())


def test_peft_base_is_the_model_with_its_adapter_off(shared_data: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sftlab.audit.teacher_forcing import continuation_logits
    from sftlab.integrations.audit_callback import _AdapterDisabled

    base_dir = resolve_model_source("smollm2-135m-instruct")
    plain = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                          LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert not torch.allclose(peft(ids).logits, plain(ids).logits)  # the adapter changes the model
        assert torch.equal(_AdapterDisabled(peft)(ids).logits, plain(ids).logits)
        # The forecast teacher-forces the base through its output head.
        assert torch.equal(continuation_logits(_AdapterDisabled(peft), [[1, 2]], [[3, 4]], 0),
                           continuation_logits(plain, [[1, 2]], [[3, 4]], 0))
    assert sum(1 for _ in _AdapterDisabled(peft).named_parameters()) == 0  # holds no weights of its own


def test_callback_settings_are_checked() -> None:
    with pytest.raises(UserError, match="every_n_steps"):
        AuditCallback()
    with pytest.raises(UserError, match="did you mean 'style_capture'"):
        AuditCallback(every_n_steps=5, sft_data="x.jsonl", fail_on="style_captre>20")
    with pytest.raises(UserError, match="unknown measure 'style_capture'"):
        AuditCallback(every_n_steps=5, fail_on="style_capture>20")  # style capture needs the SFT data
