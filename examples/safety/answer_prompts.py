"""Greedy answers of one model to the safety suite's prompt sets, as JSON lines (for hand labels or rates).

    PYTHONPATH=src .venv/bin/python examples/safety/answer_prompts.py smollm2-135m-instruct out.jsonl \
        --sets harmful benign --max-new-tokens 48 [--sample 50 40]

Each line: ``{"set", "id", "category", "prompt", "answer"}``. Generation goes through the audit's sampler
and its disk cache, so a rerun reads the answers back.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sftlab.audit.safety_prompts import load_prompt_set, stratified_sample
from sftlab.config import SamplingSettings
from sftlab.data.base_answers import answer_prompts, default_cache_dir, generation_device
from sftlab.data.records import Message
from sftlab.models.load import load_model, load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("out", type=Path)
    parser.add_argument("--sets", nargs="+", default=["harmful", "benign"])
    parser.add_argument("--sample", type=int, nargs="+", metavar="N",
                        help="answer only N prompts of each set (one N per set), stratified by category")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.model)
    # float32: bfloat16 matmuls are many times slower on most CPUs.
    model = load_model(args.model, dtype="float32" if generation_device() == "cpu" else "auto", device=generation_device())
    settings = SamplingSettings(num_samples=1, max_new_tokens=args.max_new_tokens, batch_size=16)
    rows = []
    for i, name in enumerate(args.sets):
        prompts = load_prompt_set(name)
        if args.sample:
            prompts = stratified_sample(prompts, args.sample[i], seed=0)
        out = answer_prompts(model, tokenizer, args.model, [[Message("user", p.prompt)] for p in prompts], settings,
                             greedy=True, max_length=512, cache_dir=default_cache_dir("safety_answers"),
                             description=f"answers to {name}")
        rows += [{"set": name, "id": p.id, "category": p.category, "prompt": p.prompt, "answer": texts[0]}
                 for p, texts in zip(prompts, out.texts)]
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} answers -> {args.out}")


if __name__ == "__main__":
    main()
