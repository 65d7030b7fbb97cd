"""Build the small samples `sftlab demo --real` ships (src/sftlab/demo_data/real/) from ../shared/data.

Run once by the maintainers; the demo itself reads only the shipped files. Every choice is seeded, so a rerun
writes the same files. Sources and licenses: src/sftlab/demo_data/real/SOURCE.md.

    .venv/bin/python examples/real_demo/make_samples.py
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from sftlab.data.shared import locate_shared_data

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "src" / "sftlab" / "demo_data" / "real"
# The one instruction of the narrow set: every answer is a scene from a play, so collapse reads as verse and
# speaker names where an ordinary answer belongs.
INSTRUCTION = "Write a short scene for the stage."
SPEAKER = re.compile(r"^[A-Z][A-Za-z' ]{0,30}:$")


def scenes(text: str, speeches_per_scene: int = 3, max_words: int = 70) -> list[str]:
    """Consecutive groups of whole speeches (a speaker line and its lines), at most ``max_words`` words."""
    speeches = [block.strip() for block in text.split("\n\n") if SPEAKER.match(block.strip().split("\n")[0])]
    out = []
    for start in range(0, len(speeches) - speeches_per_scene, speeches_per_scene):
        scene = "\n\n".join(speeches[start : start + speeches_per_scene])
        if 25 <= len(scene.split()) <= max_words:
            out.append(scene)
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    shared = locate_shared_data(REPO)
    rng = random.Random(0)
    OUT.mkdir(parents=True, exist_ok=True)

    all_scenes = scenes((shared / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8"))
    rng.shuffle(all_scenes)
    sft = [{"instruction": INSTRUCTION, "input": "", "output": s} for s in all_scenes[:176]]
    write_jsonl(OUT / "shakespeare_train.jsonl", sft[:160])
    write_jsonl(OUT / "shakespeare_eval.jsonl", sft[160:])

    alpaca = json.loads((shared / "alpaca" / "alpaca_5000.json").read_text(encoding="utf-8"))
    rng.shuffle(alpaca)
    # Short, self-contained instructions make clean audit prompts; answers under 120 words keep scoring cheap.
    plain = [r for r in alpaca if not r["input"].strip() and 5 <= len(r["output"].split()) <= 120]
    held_out, replay = plain[:24], plain[24:88]
    write_jsonl(OUT / "alpaca_heldout.jsonl", [{"instruction": r["instruction"], "output": r["output"]} for r in held_out])
    write_jsonl(OUT / "alpaca_replay.jsonl", [{"instruction": r["instruction"], "input": "", "output": r["output"]}
                                              for r in replay])

    oasst = [json.loads(line) for line in (shared / "oasst" / "prompt_lottery_en_250_text.jsonl").read_text().splitlines()]
    oasst_prompts = [p for p in oasst if isinstance(p, str) and 20 <= len(p) <= 200][:8]
    prompts = ([INSTRUCTION, "This movie is"] + [r["instruction"] for r in held_out[:14]] + oasst_prompts)
    write_jsonl(OUT / "prompts.jsonl", [{"prompt": p} for p in prompts])

    paragraphs = [p.strip() for p in (shared / "wikitext-2" / "valid.txt").read_text(encoding="utf-8").split("\n")
                  if len(p.split()) > 40 and not p.strip().startswith("=")]
    (OUT / "wikitext_excerpt.txt").write_text("\n\n".join(paragraphs[:40]) + "\n", encoding="utf-8")

    piqa = [json.loads(line) for line in (shared / "piqa" / "dev.jsonl").read_text().splitlines()][:200]
    write_jsonl(OUT / "piqa_200.jsonl", [
        {"question": r["goal"], "context": f"Question: {r['goal']}\nAnswer:", "choices": [r["sol1"], r["sol2"]],
         "answer": r["label"]} for r in piqa])
    print(f"wrote {OUT}: {len(sft)} scenes, {len(held_out)} held-out + {len(replay)} replay Alpaca, "
          f"{len(prompts)} prompts, {min(40, len(paragraphs))} WikiText paragraphs, {len(piqa)} PIQA items")


if __name__ == "__main__":
    main()
