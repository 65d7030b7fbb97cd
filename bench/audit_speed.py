"""Audit speed: batched shift scoring against the AlignTDS-style per-position re-forward, and audit throughput.

1. Shift scoring of N answers of 128 tokens (tuned answer teacher-forced through the base):
   * sftlab: :func:`sftlab.audit.shift.score_shift`, one forward pass per model per batch of answers;
   * peer: :func:`sftlab.audit.shift.score_per_position`, both models re-run on the growing prefix for
     every answer position (what scoring position by position costs; AlignTDS re-runs the base on each
     prefix). Both give the same classes, and KL within 1e-5 (checked here).
   Reported as a speed ratio measured in this one process.
2. Audit throughput: ``run_audit`` end to end (sampling K per prompt + greedy, shift, diversity, report)
   for a base and one tuned model: answers/s and generated tokens/s over the whole wall clock (model
   loading, diversity scoring and the report included; no corpora or benchmarks). The shift stage
   alone is part 1's batched tokens/s.
3. The style section's cost on the real model (``--real``): ``run_audit`` of SmolLM2-135M-Instruct (the built-in
   ``smollm2-135m-instruct``) against a LoRA adapter of it (random, non-zero B: no training needed to make it
   differ), with 500 Alpaca responses as the SFT data. The audit records the seconds spent embedding answers
   and prompts (all-MiniLM-L6-v2) and fitting and applying the style classifier with the surface statistics;
   their sum over the rest of the audit's wall time is what the new sections add (the budget is 15%).

Models are random-init GPT-2s of the ``tiny`` preset (about 1M parameters plus embeddings) with a
byte-level BPE trained here, so the script runs offline. Absolute numbers depend on the machine and
its load; the ratio is measured within one run.

    python bench/audit_speed.py            # full
    python bench/audit_speed.py --quick    # smaller, for a smoke test
    python bench/audit_speed.py --real     # part 3 only: the style section's cost on SmolLM2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import shared_data  # first: it puts the process offline before any HF library loads

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from sftlab.audit.shift import score_per_position, score_shift
from sftlab.config import AuditConfig, build_config
from sftlab.models.tiny import build_config as tiny_config
from sftlab.models.tiny import save_tokenizer, train_tokenizer
from sftlab.recipes.audit import run_audit

SHARED = shared_data()


def make_model(out: Path, tokenizer, seed: int) -> Path:
    torch.manual_seed(seed)
    cfg = tiny_config(len(tokenizer), "gpt2", "tiny", max_position_embeddings=512,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def bench_shift(base_dir: Path, tuned_dir: Path, n_answers: int, answer_len: int, batch_size: int) -> dict:
    base = AutoModelForCausalLM.from_pretrained(str(base_dir)).eval()
    tuned = AutoModelForCausalLM.from_pretrained(str(tuned_dir)).eval()
    vocab = base.config.vocab_size
    g = torch.Generator().manual_seed(0)
    contexts = [torch.randint(2, vocab, (int(n),), generator=g).tolist() for n in torch.randint(16, 48, (n_answers,), generator=g)]
    answers = [torch.randint(2, vocab, (answer_len,), generator=g).tolist() for _ in range(n_answers)]
    pad = base.config.pad_token_id

    score_shift(tuned, base, contexts[:2], contexts[:2], answers[:2], pad, batch_size)  # warm-up
    t0 = time.perf_counter()
    batched = score_shift(tuned, base, contexts, contexts, answers, pad, batch_size)
    t_batched = time.perf_counter() - t0

    t0 = time.perf_counter()
    naive = [score_per_position(tuned, base, c, c, a) for c, a in zip(contexts, answers)]
    t_naive = time.perf_counter() - t0

    max_kl_diff = max(float(np.abs(b.kl - n.kl).max()) for b, n in zip(batched, naive))
    # Ranks far down the distribution can differ by one where two logits tie within float error
    # (padding changes the reduction order); the classes (rank 1, 2-3, >3) must agree exactly.
    max_rank_diff = max(int(np.abs(b.ranks - n.ranks).max()) for b, n in zip(batched, naive))
    classes_equal = all((b.classes == n.classes).all() for b, n in zip(batched, naive))
    tokens = n_answers * answer_len
    return {"answers": n_answers, "answer_tokens": answer_len, "batch_size": batch_size,
            "batched_s": round(t_batched, 3), "per_position_s": round(t_naive, 3),
            "speedup": round(t_naive / t_batched, 1), "batched_tokens_per_s": round(tokens / t_batched),
            "per_position_tokens_per_s": round(tokens / t_naive, 1), "max_kl_diff": max_kl_diff,
            "max_rank_diff": max_rank_diff, "classes_equal": classes_equal}


def bench_audit(root: Path, base_dir: Path, tuned_dir: Path, n_prompts: int, k: int, new_tokens: int) -> dict:
    alpaca = json.loads((SHARED / "alpaca" / "alpaca_5000.json").read_text())[1000 : 1000 + n_prompts]
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": r["instruction"], "input": r["input"]}) + "\n"
                               for r in alpaca))
    cfg = build_config(AuditConfig, {
        "base": str(base_dir), "tuned": [str(tuned_dir)], "prompts": str(prompts), "out": str(root / "audit"),
        "sampling": {"num_samples": k, "max_new_tokens": new_tokens, "batch_size": 32}, "bootstrap_samples": 200})
    t0 = time.perf_counter()
    report = run_audit(cfg)
    total = time.perf_counter() - t0
    doc = json.loads((report.parent / "report.json").read_text())
    answers = 2 * n_prompts * (k + 1)  # base + tuned, K samples + 1 greedy each
    # The models never emit EOS early (random init), so every answer has new_tokens tokens.
    generated = answers * new_tokens
    return {"prompts": n_prompts, "k": k, "max_new_tokens": new_tokens, "seconds": round(total, 2),
            "model_seconds": doc["meta"]["model_seconds"], "answers": answers,
            "answers_per_s": round(answers / total, 1), "generated_tokens_per_s": round(generated / total),
            "shifted_share": doc["sections"]["shift"]["models"][next(iter(doc["models"].keys() - {"base"}))]
            ["class_fraction"]["shifted"]}


def bench_style_cost(root: Path, n_prompts: int, k: int, new_tokens: int, n_sft: int = 500) -> dict:
    """Part 3: the embeddings' and the style classifier's share of a real-model audit's wall time."""
    from peft import LoraConfig, get_peft_model

    from sftlab.models.builtin import resolve_model_source

    base_dir = resolve_model_source("smollm2-135m-instruct")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    lora.save_pretrained(str(root / "lora"))
    alpaca = json.loads((SHARED / "alpaca" / "alpaca_5000.json").read_text())
    prompts = root / "real_prompts.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": r["instruction"], "input": r["input"]}) + "\n"
                               for r in alpaca[2000 : 2000 + n_prompts]))
    sft = root / "real_sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": r["instruction"], "completion": r["output"]}) + "\n"
                           for r in alpaca[3000 : 3000 + n_sft]))
    cfg = build_config(AuditConfig, {
        "base": base_dir, "tuned": [str(root / "lora")], "prompts": str(prompts), "sft_data": str(sft),
        "out": str(root / "real_audit"), "bootstrap_samples": 1000,
        "sampling": {"num_samples": k, "max_new_tokens": new_tokens, "batch_size": 32}})
    report = run_audit(cfg)
    meta = json.loads((report.parent / "report.json").read_text())["meta"]
    added = meta["embedding_seconds"] + meta["style_seconds"]
    return {"prompts": n_prompts, "k": k, "max_new_tokens": new_tokens, "sft_responses": n_sft,
            "audit_seconds": meta["seconds"], "embedding_seconds": meta["embedding_seconds"],
            "style_seconds": meta["style_seconds"], "added_share": round(added / (meta["seconds"] - added), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--real", action="store_true", help="only part 3, the style section's cost on SmolLM2")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [l for l in (SHARED / "tinyshakespeare" / "input.txt").read_text().splitlines() if l][:8000]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.real:
            style = bench_style_cost(root, n_prompts=8 if args.quick else 16, k=4, new_tokens=32 if args.quick else 64)
            print(json.dumps({"style_cost": style, "threads": args.threads, "torch": torch.__version__}, indent=2))
            return
        tok = train_tokenizer(lines, vocab_size=4096)
        save_tokenizer(tok, root / "tok")
        base = make_model(root / "base", tok, 0)
        tuned = make_model(root / "tuned", tok, 1)
        n = 4 if args.quick else 16
        shift = bench_shift(base, tuned, n_answers=n, answer_len=128, batch_size=8)
        print(json.dumps({"shift": shift}, indent=2), flush=True)
        audit = bench_audit(root, base, tuned, n_prompts=8 if args.quick else 32, k=4 if args.quick else 8,
                            new_tokens=32 if args.quick else 64)
        print(json.dumps({"audit": audit, "threads": args.threads, "torch": torch.__version__}, indent=2))


if __name__ == "__main__":
    main()
