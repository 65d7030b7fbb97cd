"""Validate the audit's style capture and prompt adherence where the truth is known: the synthetic world.

The world's judge parses every sample exactly, so for each model of a finished ``sftlab demo`` it knows the
share of movie reviews among the samples on open prompts (the narrow SFT set is movie reviews only: that
share is collapse onto the SFT set) and the share of genre prompts answered in the requested genre. This
script reads every sweep run's ``audit/report.json`` and reports Spearman's rank correlation, across the
demo's strategies and seeds (and the base, once), of

* style capture (the share of answers the audit's classifier calls SFT-style, on open prompts) with the
  judge's movie-review share on open prompts;
* prompt adherence (mean prompt-answer cosine, on genre prompts) with the judge's genre adherence.

    python examples/validate_style.py runs/demo            # after `sftlab demo` (add --seeds N for more points)
    python examples/validate_style.py runs/demo --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

REVIEW = "movie_review"


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def prompt_kinds(world: Path, prompts_file: Path) -> list[str]:
    """For each audit prompt: "open", "genre" or "other" (fact questions), from the world's prompt files."""
    open_prompts = {r["prompt"].strip() for r in _rows(world / "prompts" / "open.jsonl")}
    genre_prompts = {r["prompt"].strip() for r in _rows(world / "prompts" / "genre.jsonl")}
    kinds = []
    for row in _rows(prompts_file):
        p = row["prompt"].strip()
        kinds.append("open" if p in open_prompts else "genre" if p in genre_prompts else "other")
    return kinds


def _mean_over(values: list[float | None], kinds: list[str], kind: str) -> float:
    picked = [v for v, k in zip(values, kinds) if k == kind and v is not None and not math.isnan(v)]
    return float(np.mean(picked)) if picked else float("nan")


def points(demo: Path) -> list[dict[str, Any]]:
    """One point per (run, tuned model) and one for the base: the audit's measures beside the judge's."""
    out: list[dict[str, Any]] = []
    base_done = False
    for report in sorted((demo / "sweep" / "runs").glob("*/seed*/audit/report.json")):
        doc = json.loads(report.read_text(encoding="utf-8"))
        sec = doc["sections"]
        if "style" not in sec or "world" not in sec:
            raise SystemExit(f"{report}: no style or world section (made by an older sftlab?)")
        kinds = prompt_kinds(Path(sec["world"]["world"]), Path(doc["config"]["prompts"]))
        style, world = sec["style"], sec["world"]
        for model in doc["models"]:
            if model == doc["base"]:
                if base_done:
                    continue
                base_done = True
            cap = style.get("capture", {}).get("per_prompt", {}).get(model)
            adh = style.get("adherence", {}).get("per_prompt", {}).get(model)
            judge = world["models"][model]
            open_cov = judge.get("open") or {}
            out.append({
                "run": "base" if model == doc["base"] else str(report.parent.parent.relative_to(demo / "sweep" / "runs")),
                "style_capture_open": _mean_over(cap, kinds, "open") if cap else float("nan"),
                "style_capture_all": style["capture"]["models"][model]["value"] if cap else float("nan"),
                "judge_review_share_open": (open_cov.get("shares") or {}).get(REVIEW, float("nan")),
                "adherence_genre": _mean_over(adh, kinds, "genre") if adh else float("nan"),
                "adherence_all": style["adherence"]["models"][model]["value"] if adh else float("nan"),
                "judge_genre_adherence": judge["adherence"] if judge["adherence"] is not None else float("nan"),
            })
    if not out:
        raise SystemExit(f"{demo}: no sweep run reports under sweep/runs/*/seed*/audit/")
    return out


def correlation(pts: list[dict[str, Any]], x: str, y: str) -> dict[str, Any]:
    """Spearman's rho of x and y over the points where both are defined (NaN with fewer than 3)."""
    pairs = [(p[x], p[y]) for p in pts if not (math.isnan(p[x]) or math.isnan(p[y]))]
    if len(pairs) < 3:
        return {"x": x, "y": y, "n": len(pairs), "rho": float("nan"), "p": float("nan")}
    res = spearmanr([a for a, _ in pairs], [b for _, b in pairs])
    return {"x": x, "y": y, "n": len(pairs), "rho": float(res.statistic), "p": float(res.pvalue)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="a finished `sftlab demo` output dir")
    parser.add_argument("--json", type=Path, help="also write the points and correlations here")
    args = parser.parse_args()
    pts = points(args.demo)
    corr = [correlation(pts, "style_capture_open", "judge_review_share_open"),
            correlation(pts, "style_capture_all", "judge_review_share_open"),
            correlation(pts, "adherence_genre", "judge_genre_adherence"),
            correlation(pts, "adherence_all", "judge_genre_adherence")]
    cols = list(pts[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for p in pts:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in p.values()) + " |")
    print()
    for c in corr:
        print(f"Spearman rho({c['x']}, {c['y']}) = {c['rho']:+.3f} (p = {c['p']:.3g}, n = {c['n']})")
    if args.json:
        args.json.write_text(json.dumps({"points": pts, "correlations": corr}, indent=2))


if __name__ == "__main__":
    main()
