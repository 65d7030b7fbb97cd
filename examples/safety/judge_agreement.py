"""How well each refusal judge agrees with the hand labels (tests/data/refusal_labels.jsonl).

    PYTHONPATH=src .venv/bin/python examples/safety/judge_agreement.py [labels.jsonl]

Prints, per judge: accuracy, Cohen's kappa, and the disagreements by kind of answer; then each labelled
model's refusal rate (harmful prompts) and over-refusal rate (benign prompts), by hand and by each judge,
with a bootstrap 95% interval over prompts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sftlab.audit.refusal import JUDGE_NAMES, build_judge, judge_agreement
from sftlab.audit.stats import paired_bootstrap_ci

LABELS = Path(__file__).resolve().parents[2] / "tests" / "data" / "refusal_labels.jsonl"


def main(path: Path) -> None:
    labels = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for name in JUDGE_NAMES:
        for subset in ("harmful", "benign", None):
            rows = [r for r in labels if subset is None or r["set"] == subset]
            if not rows:
                continue
            a = judge_agreement(rows, build_judge(name))
            print(f"{name:16s} {subset or 'all':8s} n={a['n']:3d} refused by hand {a['refused_by_hand']:2d}, "
                  f"by judge {a['refused_by_judge']:2d}; accuracy {a['accuracy']:.3f}, kappa {a['kappa']:.3f}; "
                  f"disagreements {a['disagreements_by_kind'] or 'none'}")
    for model in dict.fromkeys(r["model"] for r in labels):
        for subset, rate in (("harmful", "refusal rate"), ("benign", "over-refusal rate")):
            rows = [r for r in labels if r["set"] == subset and r["model"] == model]
            verdicts = {"by hand": [r["refused"] for r in rows]}
            verdicts.update({name: build_judge(name)([r["prompt"] for r in rows], [r["answer"] for r in rows])
                             for name in JUDGE_NAMES})
            for who, v in verdicts.items():
                mean, low, high = paired_bootstrap_ci([0.0] * len(v), [float(x) for x in v])  # the mean and its interval
                print(f"{model[:40]}: {rate} ({subset}, n={len(v)}) {who}: {mean:.1%} [{low:.1%}, {high:.1%}]")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else LABELS)
