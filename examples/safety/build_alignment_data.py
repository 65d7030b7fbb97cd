"""Build the alignment data `sftlab demo --real --plan safety` ships (src/sftlab/demo_data/safety/).

    PYTHONPATH=src .venv/bin/python examples/safety/build_alignment_data.py

* ``refusals.jsonl``: every prompt of the safety suite's training pool (``harmful_train``) paired with one
  of the refusals in ``refusal_phrasings.txt`` (written for sftlab), drawn with seed 0. Every answer is
  checked to be a refusal by the refusal judge's rules before the file is written.
* ``ordinary.jsonl``: Alpaca records without input and with short answers (5-80 words), none of them an
  instruction of the audit's chat suite or of the real demo's samples (its training, replay, held-out and
  prompt files), so the aligned base learns to answer ordinary requests on data no audit or fine-tune reads.
* ``replay_prompts.jsonl``: the first 48 of those instructions, which self-replay has the aligned base answer.
* ``scenes_heldout.jsonl``: the real demo's 16 held-out scenes (``shakespeare_eval.jsonl``) as text records,
  the corpus whose perplexity measures how well a fine-tune on the scenes learnt its task.

Every choice is seeded, so a rerun writes the same files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from sftlab.audit.refusal import rule_verdict
from sftlab.audit.safety_prompts import load_prompt_set
from sftlab.data.shared import locate_shared_data

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "src" / "sftlab" / "demo_data" / "safety"
REAL = REPO / "src" / "sftlab" / "demo_data" / "real"
CHAT = REPO / "src" / "sftlab" / "audit" / "suites" / "chat" / "chat.jsonl"
ORDINARY = 600
REPLAY_PROMPTS = 48


def key(text: str) -> str:
    return " ".join(text.lower().split())


def used_instructions() -> set[str]:
    """The user turns of every file an audit or a demo fine-tune reads."""
    seen = set()
    for line in CHAT.read_text(encoding="utf-8").splitlines():
        seen.add(key(json.loads(line)["messages"][0]["content"]))
    for path in REAL.glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            text = row.get("instruction") or row.get("prompt")
            if isinstance(text, str):
                seen.add(key(text))
    return seen


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(0)
    phrasings = [p for p in (OUT / "refusal_phrasings.txt").read_text(encoding="utf-8").splitlines() if p.strip()]
    not_refusals = [p for p in phrasings if rule_verdict(p) is not True]
    if not_refusals:
        raise SystemExit(f"the refusal judge's rules do not call these refusals: {not_refusals}")
    refusals = [{"instruction": p.prompt, "input": "", "output": rng.choice(phrasings)}
                for p in load_prompt_set("harmful_train")]
    write_jsonl(OUT / "refusals.jsonl", refusals)

    alpaca = json.loads((locate_shared_data(REPO) / "alpaca" / "alpaca_5000.json").read_text(encoding="utf-8"))
    rng.shuffle(alpaca)
    used = used_instructions()
    plain = [r for r in alpaca if not r["input"].strip() and 5 <= len(r["output"].split()) <= 80
             and key(r["instruction"]) not in used]
    write_jsonl(OUT / "ordinary.jsonl", [{"instruction": r["instruction"], "input": "", "output": r["output"]}
                                         for r in plain[:ORDINARY]])
    write_jsonl(OUT / "replay_prompts.jsonl", [{"instruction": r["instruction"], "input": "", "output": r["output"]}
                                               for r in plain[:REPLAY_PROMPTS]])
    scenes = [json.loads(line)["output"] for line in (REAL / "shakespeare_eval.jsonl").read_text(encoding="utf-8").splitlines()]
    write_jsonl(OUT / "scenes_heldout.jsonl", [{"text": t} for t in scenes])
    print(f"{len(refusals)} refusal records ({len(phrasings)} phrasings), {min(ORDINARY, len(plain))} ordinary "
          f"records ({len(used)} instructions excluded) -> {OUT}")


if __name__ == "__main__":
    main()
