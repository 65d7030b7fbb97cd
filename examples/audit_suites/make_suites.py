"""Build the probe suites `sftlab audit` ships (src/sftlab/audit/suites/<name>/) from ../shared/data.

Run once by the maintainers; the audit reads only the shipped files. Every choice is seeded, so a rerun
writes the same files. Sources and licenses: each suite's SOURCE.md.

    PYTHONPATH=src .venv/bin/python examples/audit_suites/make_suites.py

The `chat` suite must stay out of everything the demos and examples train on, so this script gathers those
training texts (the real demo's shipped samples and the splits examples/real_data/prepare.py makes) and
drops any candidate whose instruction or answer is among them, compared as normalised text.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

from sftlab.data.shared import locate_shared_data

REPO = Path(__file__).resolve().parents[2]
SUITES = REPO / "src" / "sftlab" / "audit" / "suites"
sys.path.insert(0, str(REPO / "examples" / "real_data"))
from prepare import split  # noqa: E402  (the examples' own Alpaca split, so the held-out side matches it)

# How many of each source the chat suite takes; together at least 120.
N_ALPACA, N_SELF_INSTRUCT, N_OASST = 60, 60, 40
# WikiText-2 test paragraphs shipped: far more than an audit scores by default, a fraction of the split's 1.2 MB.
N_PARAGRAPHS = 240


def norm(text: str) -> str:
    """Lower case, single spaces: the form texts are compared in."""
    return re.sub(r"\s+", " ", text).strip().lower()


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def trained_texts(shared: Path) -> set[str]:
    """Every instruction and answer the demos or examples may train on (or already probe with)."""
    texts: set[str] = set()
    for path in (REPO / "src" / "sftlab" / "demo_data" / "real").glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            for key in ("instruction", "output", "prompt", "question"):
                if isinstance(row.get(key), str):
                    texts.add(norm(row[key]))
    alpaca = json.loads((shared / "alpaca" / "alpaca_5000.json").read_text(encoding="utf-8"))
    records = [r for r in alpaca if str(r.get("output", "")).strip()]
    # examples/real_data trains on any non-held-out record (--train 0 takes them all): all of them count.
    train, _ = split(records, 0, 300, 0)
    for r in train:
        texts.update({norm(r["instruction"]), norm(r["output"])})
    return texts


def alpaca_items(shared: Path, banned: set[str], rng: random.Random) -> list[dict]:
    """Alpaca instructions without input from the examples' held-out 300, answers of 5-120 words."""
    alpaca = json.loads((shared / "alpaca" / "alpaca_5000.json").read_text(encoding="utf-8"))
    _, held_out = split([r for r in alpaca if str(r.get("output", "")).strip()], 0, 300, 0)
    pool = [r for r in held_out if not r["input"].strip() and 5 <= len(r["output"].split()) <= 120
            and norm(r["instruction"]) not in banned and norm(r["output"]) not in banned]
    rng.shuffle(pool)
    return [{"prompt": r["instruction"], "reference": r["output"], "source": "alpaca"} for r in pool[:N_ALPACA]]


def self_instruct_items(shared: Path, banned: set[str], rng: random.Random) -> list[dict]:
    """One instance of each user-oriented self-instruct task: the instruction, then its input when it has one."""
    pool = []
    for line in (shared / "self_instruct" / "user_oriented_instructions.jsonl").read_text(encoding="utf-8").splitlines():
        task = json.loads(line)
        inst = task["instances"][0]
        prompt = task["instruction"] + (f"\n\n{inst['input']}" if inst["input"].strip() else "")
        if 3 <= len(inst["output"].split()) <= 150 and len(prompt.split()) <= 150 and norm(prompt) not in banned:
            pool.append({"prompt": prompt, "reference": inst["output"], "source": "self-instruct"})
    rng.shuffle(pool)
    return pool[:N_SELF_INSTRUCT]


def oasst_items(shared: Path, banned: set[str], rng: random.Random) -> list[dict]:
    """OpenAssistant first turns with their best-ranked reply (rank 0), replies of 5-150 words."""
    pool = []
    for line in (shared / "oasst" / "en_100_tree.jsonl").read_text(encoding="utf-8").splitlines():
        tree = json.loads(line)
        prompt = tree["prompt"]["text"]
        replies = sorted((r for r in tree["prompt"].get("replies", []) if r.get("rank") is not None),
                         key=lambda r: r["rank"])
        if not replies or norm(prompt) in banned or len(prompt.split()) > 120:
            continue
        answer = replies[0]["text"]
        if 5 <= len(answer.split()) <= 150:
            pool.append({"prompt": prompt, "reference": answer, "source": "oasst"})
    rng.shuffle(pool)
    return pool[:N_OASST]


def chat_suite(shared: Path) -> list[dict]:
    """The three sources interleaved (seeded), so the first N items of the file are a mix of all three."""
    rng = random.Random(0)
    banned = trained_texts(shared)
    items = alpaca_items(shared, banned, rng) + self_instruct_items(shared, banned, rng) + oasst_items(shared, banned, rng)
    rng.shuffle(items)
    seen: set[str] = set()
    rows = []
    for it in items:
        if norm(it["prompt"]) in seen:
            continue
        seen.add(norm(it["prompt"]))
        rows.append({"messages": [{"role": "user", "content": it["prompt"]},
                                  {"role": "assistant", "content": it["reference"]}], "source": it["source"]})
    return rows


def knowledge_suite(shared: Path) -> list[dict]:
    """All 900 PIQA dev items, with lm-eval-harness's context ``Question: {goal}\\nAnswer:``."""
    rows = [json.loads(line) for line in (shared / "piqa" / "dev.jsonl").read_text(encoding="utf-8").splitlines()]
    return [{"question": r["goal"], "context": f"Question: {r['goal']}\nAnswer:", "choices": [r["sol1"], r["sol2"]],
             "answer": r["label"]} for r in rows]


def text_suite(shared: Path) -> str:
    """The first 240 WikiText-2 test paragraphs of more than 40 words (headings dropped), blank-line separated."""
    lines = (shared / "wikitext-2" / "test.txt").read_text(encoding="utf-8").split("\n")
    paragraphs = [p.strip() for p in lines if len(p.split()) > 40 and not p.strip().startswith("=")]
    return "\n\n".join(paragraphs[:N_PARAGRAPHS]) + "\n"


def main() -> None:
    shared = locate_shared_data(REPO)
    chat = chat_suite(shared)
    if len(chat) < 120:
        raise SystemExit(f"only {len(chat)} chat items survived the filters; the suite needs at least 120")
    write_jsonl(SUITES / "chat" / "chat.jsonl", chat)
    knowledge = knowledge_suite(shared)
    write_jsonl(SUITES / "knowledge" / "piqa.jsonl", knowledge)
    text = text_suite(shared)
    (SUITES / "text" / "wikitext2.txt").write_text(text, encoding="utf-8")
    counts = {s: sum(r["source"] == s for r in chat) for s in ("alpaca", "self-instruct", "oasst")}
    print(f"chat: {len(chat)} items {counts}; knowledge: {len(knowledge)} PIQA items; "
          f"text: {text.count(chr(10) + chr(10)) + 1} WikiText-2 test paragraphs")


if __name__ == "__main__":
    main()
