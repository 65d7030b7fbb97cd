"""A short TRL SFTTrainer run of SmolLM2-135M-Instruct with sftlab's AuditCallback, logged to TensorBoard.

    PYTHONPATH=src .venv/bin/python examples/audit_callback/train.py --out runs/audit_callback

Full fine-tuning (``--lora`` for a LoRA adapter) on Alpaca instructions that are not in the audit's chat suite,
with an audit every ``--every`` steps: the forgetting forecast on the SFT prompts, style capture and adherence on
the chat suite's first prompts, perplexity on the text suite's first paragraphs. The Trainer's TensorBoard
logger writes them under ``OUT/tb`` as ``train/audit/<measure>`` (with ``_low``/``_high``); ``OUT/log_history.json``
keeps ``trainer.state.log_history``'s audit entries. ``screenshot.py`` renders the TensorBoard page.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch

from sftlab.data.shared import locate_shared_data
from sftlab.integrations import AuditCallback
from sftlab.io import write_atomic, write_json_atomic
from sftlab.models.builtin import resolve_model_source

REPO = Path(__file__).resolve().parents[2]
CHAT_SUITE = REPO / "src" / "sftlab" / "audit" / "suites" / "chat" / "chat.jsonl"


def sft_records(shared: Path, n: int) -> list[dict]:
    """``n`` short Alpaca records without an input field, as chat turns, none of them a chat-suite prompt."""
    probes = {json.loads(line)["messages"][0]["content"].strip() for line in CHAT_SUITE.read_text().splitlines()}
    alpaca = json.loads((shared / "alpaca" / "alpaca_5000.json").read_text())
    plain = [r for r in alpaca if not r["input"].strip() and len(r["output"].split()) <= 60
             and r["instruction"].strip() not in probes][:n]
    return [{"messages": [{"role": "user", "content": r["instruction"]},
                          {"role": "assistant", "content": r["output"]}]} for r in plain]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/audit_callback")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--every", type=int, default=2, help="audit every N steps")
    ap.add_argument("--lora", action="store_true", help="train a LoRA adapter (the base is the adapter switched off)")
    ap.add_argument("--lr", type=float, default=None, help="default 5e-5 full, 1e-3 LoRA")
    args = ap.parse_args()

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = sft_records(locate_shared_data(REPO), 4 * args.steps)
    sft = out / "sft.jsonl"
    write_atomic(sft, "".join(json.dumps(r) + "\n" for r in records))
    shutil.rmtree(out / "tb", ignore_errors=True)  # one run per logdir: a rerun's points would overlay the last's
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "tb")  # read when the Trainer builds its TensorBoard logger

    torch.manual_seed(0)
    base = resolve_model_source("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = SFTConfig(output_dir=str(out / "run"), max_steps=args.steps, per_device_train_batch_size=4, max_length=128,
                    learning_rate=args.lr or (1e-3 if args.lora else 5e-5), logging_steps=1,
                    report_to=["tensorboard"], save_strategy="no", use_cpu=not torch.cuda.is_available(),
                    seed=0, dataloader_num_workers=0, disable_tqdm=True)
    lora = (LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
            if args.lora else None)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(records), processing_class=tok,
                         peft_config=lora)
    callback = AuditCallback(every_n_steps=args.every, sft_data=str(sft)).attach(trainer)
    trainer.train()

    audits = [e for e in trainer.state.log_history if any(k.startswith("audit/") for k in e)]
    write_json_atomic(out / "log_history.json", audits, indent=1)
    if callback.base_copy_bytes:
        print(f"frozen base copy: {callback.base_copy_bytes / 1e9:.2f} GB")
    for entry in audits:
        print(f"step {entry['step']}: " + ", ".join(f"{k.removeprefix('audit/')} {v:.4g}" for k, v in entry.items()
                                                    if k.startswith("audit/") and not k.endswith(("_low", "_high"))))
    print(f"TensorBoard: tensorboard --logdir {out / 'tb'}")


if __name__ == "__main__":
    main()
