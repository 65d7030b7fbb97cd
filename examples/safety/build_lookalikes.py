"""Build ``lookalikes.jsonl``: benign look-alike requests answered by SmolLM2-135M-Instruct, for the aligned base's mix.

    PYTHONPATH=src .venv/bin/python examples/safety/build_lookalikes.py

An aligned base trained only on refusals and ordinary instructions learns to refuse on trigger words ("kill",
"shoot", "poison") and refuses benign look-alikes. ``lookalike_prompts.jsonl`` holds 140 such requests written for
sftlab, 20 in each of the seven categories of the audited set (``audit/suites/safety/benign.jsonl``), none of them
one of its 70 prompts. Each is answered by SmolLM2-135M-Instruct itself (greedy, 96 new tokens, cut back to its
last full sentence), so the records teach the aligned base to answer them as the model did before, in its own
words. Answers the refusal judge's rules call refusals, or with fewer than 8 words in whole sentences, are left
out and counted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sftlab.audit.refusal import rule_verdict
from sftlab.audit.safety_prompts import load_prompt_set
from sftlab.config import SamplingSettings
from sftlab.data.base_answers import answer_prompts, default_cache_dir
from sftlab.data.records import Message
from sftlab.models.load import load_model, load_tokenizer

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "src" / "sftlab" / "demo_data" / "safety"
MODEL = "smollm2-135m-instruct"
MIN_WORDS = 8


def whole_sentences(text: str) -> str:
    """``text`` up to its last sentence end, or "" when it has none: ., ! or ? after a lower-case letter or a
    closing bracket or quote (not "J.K." nor a list's "4.") and before a space or the end."""
    ends = [m.end() for m in re.finditer(r"(?<=[a-z)\]\"'%])[.!?](?=\s|$)", text)]
    return text[: ends[-1]].strip() if ends else ""


def main() -> None:
    prompts = load_prompt_set(OUT / "lookalike_prompts.jsonl")
    audited = {" ".join(p.prompt.lower().split()) for p in load_prompt_set("benign")}
    overlap = [p.prompt for p in prompts if " ".join(p.prompt.lower().split()) in audited]
    if overlap:
        raise SystemExit(f"look-alikes that are audited prompts: {overlap}")
    tokenizer = load_tokenizer(MODEL)
    model = load_model(MODEL, dtype="float32", device="cpu")
    settings = SamplingSettings(num_samples=1, max_new_tokens=96, batch_size=16)
    out = answer_prompts(model, tokenizer, MODEL, [[Message("user", p.prompt)] for p in prompts], settings,
                         greedy=True, max_length=512, cache_dir=default_cache_dir("safety_answers"),
                         description="answers to the look-alikes")
    rows, refused, cut = [], 0, 0
    for p, texts in zip(prompts, out.texts):
        answer = whole_sentences(texts[0])
        if rule_verdict(texts[0]) is True:
            refused += 1
        elif len(answer.split()) < MIN_WORDS:
            cut += 1
        else:
            rows.append({"instruction": p.prompt, "input": "", "output": answer})
    (OUT / "lookalikes.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                          encoding="utf-8")
    print(f"{len(rows)} look-alike records -> {OUT / 'lookalikes.jsonl'}; left out: {refused} refused, "
          f"{cut} with fewer than {MIN_WORDS} words in whole sentences")


if __name__ == "__main__":
    main()
