"""Hand labels for the real demo's answers, and how well the audit's style and adherence measures agree with them.

Two steps, from the repo root, after ``sftlab demo --real`` (its seed-0 runs):

    python examples/real_demo/label_answers.py pick runs/demo_real [--n 40]      # writes labels.jsonl, unlabelled
    # ... a person reads each answer and fills in "in_style" and "on_question" (true / false) ...
    python examples/real_demo/label_answers.py score runs/demo_real [--json out.json]

``pick`` draws ``--n`` answers, seeded, spread evenly over the base and every strategy: each is the first
sampled answer of one model to one audit prompt, as the demo's ``side_by_side.html`` shows it. The two labels:

* ``in_style``: the answer is written in the SFT set's style (a stage scene: speaker names, verse, archaic
  diction), whatever it says;
* ``on_question``: the answer addresses what the prompt asks (for "This movie is", it goes on about a movie).

``score`` checks that every labelled answer is still the one in the run's ``audit/report.json`` (a rerun with
other samples invalidates the labels) and reports, against the labels:

* the audit's style classifier (its call on that very answer, ``style.capture.per_sample``) and the demo's
  speaker-line rule (``scene_style``): accuracy, Cohen's kappa, and the counts;
* prompt adherence (that answer's prompt-answer cosine, ``style.adherence.per_sample``): the AUC of the
  cosine for telling on-question answers from off-question ones (Mann-Whitney; 0.5 is chance), and the
  mean cosine of each group.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import mannwhitneyu

from sftlab.recipes.demo_real import SPEAKER_LINE

LABELS = Path(__file__).with_name("labels.jsonl")


def answer_table(demo: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """Every (model, prompt index) of the seed-0 audits: the first sample and the audit's per-answer measures."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    reports = sorted((demo / "sweep" / "runs").glob("*/seed0/audit/report.json"))
    if not reports:
        raise SystemExit(f"no seed-0 audits under {demo}/sweep/runs: run `sftlab demo --real` first")
    for report in reports:
        doc = json.loads(report.read_text(encoding="utf-8"))
        sec = doc["sections"]
        strategy = report.parents[2].name
        base = doc["base"]
        capture = sec["style"]["capture"]["per_sample"]
        adherence = sec["style"]["adherence"]["per_sample"]
        prompts = sec["scene_style"]["prompts"]
        for model, answers in sec["scene_style"]["answers"].items():
            name = "base" if model == base else strategy
            for p, text in enumerate(answers["first_sample"]):
                out[(name, p)] = {"model": name, "prompt_index": p, "prompt": prompts[p], "answer": text,
                                  "classifier_sft": capture[model][p][0], "cosine": adherence[model][p][0]}
    return out


def pick(demo: Path, n: int, seed: int) -> None:
    """Write ``n`` unlabelled answers to labels.jsonl, the same number per model where ``n`` allows."""
    table = answer_table(demo)
    models = sorted({m for m, _ in table})
    rng = random.Random(seed)
    by_model: dict[str, list[int]] = {}
    for m in models:
        by_model[m] = sorted(p for mm, p in table if mm == m)
        rng.shuffle(by_model[m])
    chosen: list[tuple[str, int]] = []
    while len(chosen) < n and any(by_model.values()):
        for m in models:
            if by_model[m] and len(chosen) < n:
                chosen.append((m, by_model[m].pop()))
    rng.shuffle(chosen)  # labelled in this order, so the model of an answer is not guessed from its neighbours
    rows = [{k: table[key][k] for k in ("model", "prompt_index", "prompt", "answer")} | {"in_style": None,
            "on_question": None} for key in chosen]
    if LABELS.exists():
        raise SystemExit(f"{LABELS} exists: remove it to draw a new set (its labels would be lost)")
    LABELS.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{LABELS}: {len(rows)} answers to label ({', '.join(models)})")


def kappa(a: list[bool], b: list[bool]) -> float:
    """Cohen's kappa of two binary raters."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    observed = float(np.mean(x == y))
    expected = float(x.mean() * y.mean() + (1 - x.mean()) * (1 - y.mean()))
    return (observed - expected) / (1 - expected) if expected < 1 else float("nan")


def agreement(name: str, calls: list[bool], labels: list[bool]) -> dict[str, Any]:
    """Accuracy, kappa and the confusion counts of ``calls`` against ``labels``."""
    pairs = list(zip(calls, labels))
    return {"measure": name, "n": len(pairs), "accuracy": float(np.mean([c == lab for c, lab in pairs])),
            "kappa": kappa(calls, labels),
            "true_pos": sum(c and lab for c, lab in pairs), "false_pos": sum(c and not lab for c, lab in pairs),
            "false_neg": sum(lab and not c for c, lab in pairs), "true_neg": sum(not c and not lab for c, lab in pairs)}


def score(demo: Path) -> dict[str, Any]:
    """Agreement of the audit's measures with the committed labels."""
    table = answer_table(demo)
    rows = [json.loads(line) for line in LABELS.read_text(encoding="utf-8").splitlines() if line.strip()]
    missing = [r for r in rows if r["in_style"] is None or r["on_question"] is None]
    if missing:
        raise SystemExit(f"{LABELS}: {len(missing)} answers still unlabelled")
    for r in rows:
        found = table.get((r["model"], r["prompt_index"]))
        if found is None or found["answer"] != r["answer"]:
            raise SystemExit(f"{LABELS}: the {r['model']} answer to prompt {r['prompt_index']} is not the one in "
                             f"{demo}'s audit (another run?): the labels belong to other samples")
    measured = [table[(r["model"], r["prompt_index"])] for r in rows]
    style_labels = [bool(r["in_style"]) for r in rows]
    style = [agreement("style classifier (audit)", [bool(m["classifier_sft"]) for m in measured], style_labels),
             agreement("speaker-line rule (scene_style)", [bool(SPEAKER_LINE.search(r["answer"])) for r in rows],
                       style_labels)]
    on = [m["cosine"] for m, r in zip(measured, rows) if r["on_question"]]
    off = [m["cosine"] for m, r in zip(measured, rows) if not r["on_question"]]
    adherence: dict[str, Any] = {"n_on": len(on), "n_off": len(off),
                                 "mean_cosine_on": float(np.mean(on)) if on else None,
                                 "mean_cosine_off": float(np.mean(off)) if off else None}
    if on and off:
        test = mannwhitneyu(on, off, alternative="greater")
        adherence.update(auc=float(test.statistic) / (len(on) * len(off)), p_value=float(test.pvalue))
    return {"labels": str(LABELS), "n": len(rows), "in_style": sum(style_labels),
            "on_question": sum(bool(r["on_question"]) for r in rows), "style": style, "adherence": adherence}


def main() -> None:
    """``pick`` or ``score``; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["pick", "score"])
    parser.add_argument("demo", type=Path, help="the real demo's output dir (runs/demo_real)")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.step == "pick":
        pick(args.demo, args.n, args.seed)
        return
    result = score(args.demo)
    print(f"{result['n']} labelled answers: {result['in_style']} in the SFT style, {result['on_question']} on the question")
    for s in result["style"]:
        print(f"  {s['measure']}: accuracy {s['accuracy']:.3f}, kappa {s['kappa']:.3f} "
              f"(TP {s['true_pos']}, FP {s['false_pos']}, FN {s['false_neg']}, TN {s['true_neg']})")
    a = result["adherence"]
    if "auc" in a:
        print(f"  adherence cosine: AUC {a['auc']:.3f} (p {a['p_value']:.2g}); mean cosine on-question "
              f"{a['mean_cosine_on']:.3f} (n {a['n_on']}), off-question {a['mean_cosine_off']:.3f} (n {a['n_off']})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
