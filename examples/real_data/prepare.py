"""Split the Alpaca sample, and cut a WikiText-2 test sample, into the files the real-data recipe uses.

Why a split file and not ``eval_fraction``: ``sftlab train`` holds out ``eval_fraction`` of the records
in memory and writes none of them down, so the audit could not be sure that its eval set and prompts
were never trained on. Here the held-out records are chosen once, with a fixed seed, and written out:

    OUT/alpaca_train.json     ``--train`` records: the SFT training set (and the audit's ``sft_data``)
    OUT/alpaca_heldout.json   ``--heldout`` records never trained on: ``eval_file`` of both fine-tunes (eval loss)
    OUT/alpaca_eval_set.json  the first ``--eval-set`` held-out records: the audit's ``eval_set`` (ROUGE-L, BLEU)
    OUT/audit_prompts.jsonl   ``--prompts`` other held-out instructions without an input: the audit's prompts
    OUT/wikitext2_test.txt    the first ``--wikitext-articles`` articles of WikiText-2 test: the audit's
                              ``reference`` for forgetting (perplexity); 0 copies the whole split

The WikiText-2 sample exists for time: perplexity on all 380k test tokens takes a 2-core CPU about two
minutes per model. The sample is whole articles, cut at an article heading (`` = Title = ``).

Records with an empty ``output`` are dropped here (and counted), because the audit reads its eval set
strictly and a record without a reference answer would stop it. Standard library only, so it runs
before anything is installed.

Usage (from the repo root; run.sh calls it so)::

    python examples/real_data/prepare.py --alpaca ../shared/data/alpaca/alpaca_5000.json \
        --wikitext-test ../shared/data/wikitext-2/test.txt --out runs/real_data/data
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

# A WikiText article starts with a level-1 heading line: " = Title = " (sections are " = = Title = = ").
ARTICLE_HEADING = re.compile(r"^ = [^=].* = $")


def split(records: list[dict], n_train: int, n_heldout: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Shuffle with ``seed``; hold out ``n_heldout`` records and take ``n_train`` of the rest (0 = all of them).

    Each side keeps the file's order.
    """
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_heldout])
    rest = order[n_heldout:]
    train = set(rest[:n_train] if n_train > 0 else rest)
    return [r for i, r in enumerate(records) if i in train], [r for i, r in enumerate(records) if i in held]


def first_articles(text: str, n: int) -> tuple[str, int]:
    """The first ``n`` articles of a WikiText file (all when ``n`` is 0) and how many were taken."""
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if ARTICLE_HEADING.match(line)]
    if n <= 0 or n >= len(starts):
        return text, len(starts)
    return "\n".join(lines[: starts[n]]) + "\n", n


def main() -> None:
    """Read the Alpaca json and WikiText-2 test, write the five files, print what went where."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alpaca", required=True, help="Stanford Alpaca json (a list of instruction/input/output)")
    parser.add_argument("--wikitext-test", required=True, help="WikiText-2 test.txt")
    parser.add_argument("--out", required=True, help="dir for the split files")
    parser.add_argument("--train", type=int, default=2000, help="SFT training records (0 = all not held out)")
    parser.add_argument("--heldout", type=int, default=300, help="records held out from training")
    parser.add_argument("--eval-set", type=int, default=100, help="held-out records scored for ROUGE-L/BLEU")
    parser.add_argument("--prompts", type=int, default=32, help="held-out instructions sampled for diversity/shift")
    parser.add_argument("--wikitext-articles", type=int, default=12, help="test articles kept (0 = all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    raw = json.loads(Path(args.alpaca).read_text(encoding="utf-8"))
    records = [r for r in raw if str(r.get("output", "")).strip()]
    train, heldout = split(records, args.train, args.heldout, args.seed)
    eval_set = heldout[: args.eval_set]
    # Prompts come from the rest of the held-out records, and only those that need no input text, so
    # each prompt is an open instruction with room for varied answers.
    prompts = [r for r in heldout[args.eval_set :] if not str(r.get("input", "")).strip()][: args.prompts]
    if len(prompts) < args.prompts:
        raise SystemExit(f"only {len(prompts)} held-out instructions without input; lower --prompts")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("alpaca_train.json", train), ("alpaca_heldout.json", heldout),
                       ("alpaca_eval_set.json", eval_set)):
        (out / name).write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    with (out / "audit_prompts.jsonl").open("w", encoding="utf-8") as fh:
        for r in prompts:
            fh.write(json.dumps({"instruction": r["instruction"]}, ensure_ascii=False) + "\n")
    wiki, n_articles = first_articles(Path(args.wikitext_test).read_text(encoding="utf-8"), args.wikitext_articles)
    (out / "wikitext2_test.txt").write_text(wiki, encoding="utf-8")
    print(f"{args.alpaca}: {len(raw)} records, {len(raw) - len(records)} with an empty output dropped; "
          f"{len(train)} train, {len(heldout)} held out ({len(eval_set)} eval set, {len(prompts)} prompts) -> {out}")
    print(f"{args.wikitext_test}: first {n_articles} articles ({len(wiki.split()):,} words) -> "
          f"{out / 'wikitext2_test.txt'}")


if __name__ == "__main__":
    main()
