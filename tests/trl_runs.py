"""Fine-tunes of SmolLM2 made with TRL's SFTTrainer, saved as TRL saves them (for the audit-anyone's-output tests)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

# What a user who trained from the hub finds in their adapter_config.json.
HUB_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def chat_records(shared: Path, n: int) -> list[dict]:
    """``n`` Alpaca records as chat turns, the format SFTTrainer reads."""
    alpaca = json.loads((shared / "alpaca" / "alpaca_5000.json").read_text())
    plain = [r for r in alpaca if not r["input"].strip() and len(r["output"].split()) <= 60][:n]
    return [{"messages": [{"role": "user", "content": r["instruction"]},
                          {"role": "assistant", "content": r["output"]}]} for r in plain]


def train_with_trl(base_dir: str, out: Path, records: list[dict], lora: bool, steps: int = 4,
                   callbacks: Sequence[object] = (), save_steps: int | None = None, lr: float | None = None,
                   attach: object | None = None):
    """Train ``base_dir`` with ``trl.SFTTrainer`` for ``steps`` steps (batch 2, rows of at most 64 tokens), save
    with ``trainer.save_model(out)``; returns the trainer. A LoRA run saves an adapter dir, a full run a model dir.
    ``attach``: a callback with an ``attach(trainer)`` method (sftlab's AuditCallback), attached before training."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    args = SFTConfig(output_dir=str(out.parent / f"{out.name}_run"), max_steps=steps, per_device_train_batch_size=2,
                     max_length=64, learning_rate=lr or (2e-3 if lora else 1e-4), logging_steps=1, report_to=[],
                     save_strategy="steps" if save_steps else "no", save_steps=save_steps or steps, use_cpu=True,
                     bf16=False, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    peft_config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM") if lora else None
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(records), processing_class=tok,
                         peft_config=peft_config, callbacks=list(callbacks))
    if attach is not None:
        attach.attach(trainer)  # type: ignore[attr-defined]
    trainer.train()
    trainer.save_model(str(out))
    return trainer


def point_adapter_at_hub(adapter_dir: Path) -> None:
    """Record the hub id as the adapter's base, as an adapter trained from the hub does."""
    path = adapter_dir / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg["base_model_name_or_path"] = HUB_BASE
    path.write_text(json.dumps(cfg, indent=2))
