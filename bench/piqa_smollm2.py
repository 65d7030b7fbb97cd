"""SmolLM2-135M-Instruct on PIQA, scored as lm-evaluation-harness scores it: acc, acc_norm and mean-token.

Reads the 900-item PIQA dev subset in ``../shared/data/piqa/dev.jsonl`` (see its SOURCE.md) with
lm-eval's ``piqa`` prompt (``"Question: {goal}\\nAnswer:"``, each solution after a space) through
:func:`sftlab.audit.forgetting.read_piqa`, scores both solutions of every item with
:func:`sftlab.audit.forgetting.choice_scores` (one forward pass per batch of choices, fp32, no BOS, as
lm-eval's default) and reports the accuracy under each rule with its binomial standard error
(lm-eval's ``acc_stderr``: sqrt(p (1 - p) / (n - 1))).

It also counts the items where lm-eval's split of the token ids (the continuation is what tokenizing
context + continuation adds after the context) differs from tokenizing the continuation alone: where it
is zero, sftlab's generation-time tokenization and lm-eval's agree on this data.

    python bench/piqa_smollm2.py                   # all 900 items
    python bench/piqa_smollm2.py --limit 50        # a smoke test
    python bench/piqa_smollm2.py --json out.json   # also write the figures
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from common import shared_data  # first: it puts the process offline before any HF library loads

import torch  # noqa: E402

from sftlab.audit import forgetting  # noqa: E402
from sftlab.data.tokenize import tokenize_texts  # noqa: E402
from sftlab.models.load import load_model, load_tokenizer  # noqa: E402


def stderr(p: float, n: int) -> float:
    """lm-eval's standard error of a mean of 0/1 scores (sample standard deviation / sqrt(n))."""
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="built-in name, .gguf file or model dir")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N items")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    args = parser.parse_args()

    items = forgetting.read_piqa(shared_data() / "piqa" / "dev.jsonl")[: args.limit]
    tok = load_tokenizer(args.model)
    model = load_model(args.model, dtype="float32")

    pairs = [(forgetting.mc_context(it), " " + c) for it in items for c in it.choices]
    split = forgetting.encode_choice_pairs(tok, pairs)
    alone = tokenize_texts(tok, [a for _, a in pairs])
    boundary_differs = sum(cont != a for (_, cont), a in zip(split, alone))
    non_ascii = sum(not c.isascii() for it in items for c in it.choices)

    start = time.perf_counter()
    with torch.inference_mode():
        scores = forgetting.choice_scores(model, tok, items, batch_size=args.batch_size)
    seconds = time.perf_counter() - start

    n = len(items)
    result: dict[str, object] = {"model": args.model, "items": n, "seconds": round(seconds, 1),
                                 "choices_with_other_ids_when_tokenized_alone": boundary_differs,
                                 "choices_with_non_ascii_text": non_ascii, "torch_threads": torch.get_num_threads()}
    for rule in forgetting.MC_SCORES:
        acc = forgetting.mc_accuracy(items, scores, rule)
        result[rule] = {"accuracy": acc, "stderr": stderr(acc, n)}
    # How often the rules disagree, and how often the summed rule prefers the shorter solution.
    preds = {rule: forgetting.mc_predictions(scores, rule) for rule in forgetting.MC_SCORES}
    result["acc_vs_acc_norm_disagree"] = sum(a != b for a, b in zip(preds["acc"], preds["acc_norm"]))
    shorter = [min(range(2), key=lambda j: len(it.choices[j])) for it in items]
    result["acc_picks_shorter"] = sum(p == s for p, s in zip(preds["acc"], shorter)) / n
    result["gold_is_shorter"] = sum(it.answer == s for it, s in zip(items, shorter)) / n

    for rule in forgetting.MC_SCORES:
        r = result[rule]
        print(f"{rule:>10}: {100 * r['accuracy']:.1f} ± {100 * r['stderr']:.1f} %  ({n} items)")
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
