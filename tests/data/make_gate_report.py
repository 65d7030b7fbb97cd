"""Write tests/data/gate_report.json: a real audit's report.json for the gate tests (test_audit_gate.py).

A tiny GPT-2 base, a full fine-tune of it and a LoRA adapter (the end-to-end audit test's models), audited
with SFT data, a reference corpus, a multiple-choice benchmark named ``piqa`` (PIQA's first 24 short dev items)
and an eval set; the per-sample and per-prompt lists are dropped to keep the file small.

    PYTHONPATH=src:tests .venv/bin/python tests/data/make_gate_report.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from conftest import make_tiny_model_dir
from sftlab.config import AuditConfig, build_config
from sftlab.data.shared import locate_shared_data
from sftlab.models.tiny import save_tokenizer, train_tokenizer
from sftlab.recipes.audit import run_audit
from test_audit_e2e import make_lora_adapter, train_copy, write_inputs
from transformers import AutoTokenizer

REPO = Path(__file__).resolve().parents[2]


def _trim(value: object) -> object:
    if isinstance(value, dict):
        return {k: _trim(v) for k, v in value.items() if k not in ("per_sample", "per_prompt", "answers", "examples")}
    return value


def main() -> None:
    shared = locate_shared_data(REPO)
    root = Path(tempfile.mkdtemp(prefix="gate-report-"))
    lines = [l for l in (shared / "tinyshakespeare" / "input.txt").read_text().splitlines() if l][:4000]
    save_tokenizer(train_tokenizer(lines, vocab_size=1024), root / "tok")
    tok = AutoTokenizer.from_pretrained(str(root / "tok"))
    files = write_inputs(root / "data", shared)
    piqa = [r for r in map(json.loads, (shared / "piqa" / "dev.jsonl").read_text().splitlines())
            if len(r["goal"]) + max(len(r["sol1"]), len(r["sol2"])) < 200][:24]  # within the tiny model's 256 positions
    (root / "data" / "piqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in piqa))
    base = train_copy(make_tiny_model_dir(root / "init", tok), root / "base", lines[:400], tok, steps=25, lr=3e-3)
    sft = [f"{r['prompt']}\n{r['completion']}" for r in map(json.loads, files["sft.jsonl"].read_text().splitlines())]
    tuned = train_copy(base, root / "full", sft, tok, steps=30, lr=5e-3)
    lora = make_lora_adapter(base, root / "lora")
    cfg = build_config(AuditConfig, {
        "base": str(base), "tuned": {"full": str(tuned), "lora": str(lora)}, "prompts": str(files["prompts.jsonl"]),
        "sft_data": str(files["sft.jsonl"]), "reference": [str(files["ref.txt"])],
        "benchmark": [str(root / "data" / "piqa.jsonl")], "eval_set": str(files["eval.jsonl"]),
        "out": str(root / "audit"), "cache_dir": str(root / "cache"), "sampling": {"num_samples": 4, "max_new_tokens": 16},
        "bootstrap_samples": 200, "forecast_prompts": 4})
    doc = json.loads((run_audit(cfg).parent / "report.json").read_text())
    out = REPO / "tests" / "data" / "gate_report.json"
    out.write_text(json.dumps(_trim(doc), indent=1) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
