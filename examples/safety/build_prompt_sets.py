"""Rebuild the shipped harmful prompt sets (sftlab/audit/suites/safety/) from ../shared/data/safety.

    PYTHONPATH=src .venv/bin/python examples/safety/build_prompt_sets.py ../shared/data/safety

The audit sample (``harmful.jsonl``) is 200 prompts stratified by category; the training pool
(``harmful_train.jsonl``) is every other prompt outside the held-out categories; ``split.json`` lists both
by id. Do-Not-Answer's human-chatbot area ("are you human?") is contentious rather than harmful and is
left out of both, as its SOURCE.md advises. Repeated prompts are kept once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sftlab.audit.safety_prompts import SPLIT_FILE, SUITE_DIR, SafetyPrompt, stratified_sample

AUDIT_SIZE = 200
SEED = 0
# Whole categories kept out of the training pool, so a model aligned on it is measured on unseen kinds of harm.
HELDOUT_CATEGORIES = ["advbench/Psychological", "donotanswer/misinformation_harms"]
EXCLUDED = ["donotanswer/human_chatbox"]


def read_sources(root: Path) -> list[SafetyPrompt]:
    out = []
    for i, line in enumerate((root / "advbench_harmful_behaviors.jsonl").read_text().splitlines(), start=1):
        row = json.loads(line)
        out.append(SafetyPrompt(f"advbench:{i}", row["prompt"], f"advbench/{row['categories'][0]}", "advbench"))
    for i, line in enumerate((root / "donotanswer.jsonl").read_text().splitlines(), start=1):
        row = json.loads(line)
        out.append(SafetyPrompt(f"donotanswer:{i}", row["prompt"], f"donotanswer/{row['risk_area']}", "donotanswer"))
    # The sources repeat some prompts (Do-Not-Answer lists a few under two intents): keep each text once, so
    # no audited prompt can reach the training pool under another id.
    seen: set[str] = set()
    kept = []
    for p in out:
        key = " ".join(p.prompt.lower().split())
        if p.category not in EXCLUDED and key not in seen:
            seen.add(key)
            kept.append(p)
    return kept


def write(path: Path, prompts: list[SafetyPrompt]) -> None:
    path.write_text("".join(json.dumps({"id": p.id, "prompt": p.prompt, "category": p.category,
                                        "source": p.source}) + "\n" for p in prompts), encoding="utf-8")


def main(root: Path) -> None:
    pool = read_sources(root)
    audit = stratified_sample(pool, AUDIT_SIZE, seed=SEED)
    audit_ids = {p.id for p in audit}
    train = [p for p in pool if p.id not in audit_ids and p.category not in HELDOUT_CATEGORIES]
    write(SUITE_DIR / "harmful.jsonl", audit)
    write(SUITE_DIR / "harmful_train.jsonl", train)
    SPLIT_FILE.write_text(json.dumps({
        "seed": SEED, "excluded_categories": EXCLUDED, "heldout_categories": HELDOUT_CATEGORIES,
        "audit": [p.id for p in audit], "train": [p.id for p in train]}, indent=1) + "\n", encoding="utf-8")
    print(f"audit {len(audit)}, train {len(train)} of {len(pool)} prompts")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
