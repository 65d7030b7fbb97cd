"""How well each refusal judge agrees with the hand labels (tests/data/refusal_labels.jsonl).

    PYTHONPATH=src .venv/bin/python examples/safety/judge_agreement.py [labels.jsonl]

Prints, per judge: accuracy, Cohen's kappa, and the disagreements by kind of answer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sftlab.audit.refusal import JUDGE_NAMES, build_judge, judge_agreement

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


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else LABELS)
