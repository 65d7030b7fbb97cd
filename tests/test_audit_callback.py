"""AuditCallback inside TRL's SFTTrainer on SmolLM2: the logged audit equals a standalone audit of the checkpoint."""

from __future__ import annotations

import json
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
    for name in ("style_capture", "adherence", "perplexity"):
        for part, value in (("", standalone[name].change), ("_low", standalone[name].low),
                            ("_high", standalone[name].high)):
            assert logged[0][f"audit/{name}{part}"] == pytest.approx(value, rel=1e-9, abs=1e-12), name + part
    # The forecast is not logged: inside the loop it gave 0.0 where the standalone audit gives 0.085 (open).
    assert "audit/forecast_kl" not in logged[0]
    assert logged[0]["audit/perplexity"] != 0  # the model moved


def test_peft_base_is_the_model_with_its_adapter_off(shared_data: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sftlab.integrations.audit_callback import _AdapterDisabled

    base_dir = resolve_model_source("smollm2-135m-instruct")
    plain = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                          LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert not torch.allclose(peft(ids).logits, plain(ids).logits)  # the adapter changes the model
        assert torch.equal(_AdapterDisabled(peft)(ids).logits, plain(ids).logits)
    assert sum(1 for _ in _AdapterDisabled(peft).named_parameters()) == 0  # holds no weights of its own


def test_callback_settings_are_checked() -> None:
    with pytest.raises(UserError, match="every_n_steps"):
        AuditCallback()
    with pytest.raises(UserError, match="did you mean 'style_capture'"):
        AuditCallback(every_n_steps=5, sft_data="x.jsonl", fail_on="style_captre>20")
    with pytest.raises(UserError, match="unknown measure 'style_capture'"):
        AuditCallback(every_n_steps=5, fail_on="style_capture>20")  # style capture needs the SFT data
