"""Nested 1x / 4x / 16x training sets and a PIQA benchmark file for the data-scaling recipe.

Reads the training split that ``examples/real_data/prepare.py --train 0`` writes (every record not held
out) and writes, into the same dir:

    train_1x.json, train_4x.json, train_16x.json   the first base, 4*base and 16*base training records,
                                                   so each set holds the smaller ones (more data adds
                                                   records, it never repeats them)
    piqa.jsonl                                     the first --piqa PIQA dev items as the audit's
                                                   multiple-choice format: {question, choices, answer}

A size the split cannot fill is refused: repeating records would be more epochs, not more data.
Standard library only.

Usage (run.sh calls it so)::

    python examples/data_scaling/prepare.py --data runs/data_scaling/data --piqa-file ../shared/data/piqa/dev.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SCALES = (1, 4, 16)


def main() -> None:
    """Write the nested training sets and the PIQA file; print their sizes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dir holding alpaca_train.json (from real_data/prepare.py)")
    parser.add_argument("--piqa-file", required=True, help="PIQA dev.jsonl ({goal, sol1, sol2, label})")
    parser.add_argument("--base", type=int, default=250, help="records in the 1x set")
    parser.add_argument("--piqa", type=int, default=300, help="PIQA items kept (0 = all)")
    args = parser.parse_args()

    data = Path(args.data)
    train = json.loads((data / "alpaca_train.json").read_text(encoding="utf-8"))
    if SCALES[-1] * args.base > len(train):
        raise SystemExit(f"{SCALES[-1]}x of {args.base} records needs {SCALES[-1] * args.base}, but the split has "
                         f"{len(train)}; lower --base (repeating records would be more epochs, not more data)")
    for scale in SCALES:
        rows = train[: scale * args.base]
        (data / f"train_{scale}x.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n",
                                                   encoding="utf-8")
        print(f"train_{scale}x.json: {len(rows)} records")
    lines = Path(args.piqa_file).read_text(encoding="utf-8").splitlines()
    items = [json.loads(line) for line in lines if line.strip()]
    items = items[: args.piqa] if args.piqa > 0 else items
    with (data / "piqa.jsonl").open("w", encoding="utf-8") as fh:
        for it in items:
            fh.write(json.dumps({"question": it["goal"], "choices": [it["sol1"], it["sol2"]],
                                 "answer": int(it["label"])}, ensure_ascii=False) + "\n")
    print(f"piqa.jsonl: {len(items)} items")


if __name__ == "__main__":
    main()
