"""The real demo's results table, per strategy, from its runs' files (what docs/results.md shows).

    python examples/real_demo/table.py runs/demo_real            # Markdown table on stdout
    python examples/real_demo/table.py runs/demo_real --json out.json

Per strategy, the mean over its seeds (± the sample std with more than one seed) of:

* the narrow task: eval loss on the held-out scenes, and the share of answers to the SFT instruction
  written as a play (speaker lines, ``scene_style``);
* collapse on unrelated prompts: the play-style share there, the audit's style capture (the share its
  classifier calls SFT-style) and the change in prompt adherence (prompt-answer cosine);
* diversity kept (EAD, per input and across inputs, as a share of the base's), and the embedding diversity
  per input (change against the base);
* forgetting: ROUGE-L of greedy answers to held-out Alpaca instructions, WikiText-2 excerpt perplexity
  change, PIQA accuracy (lm-eval's acc);
* token shift (share of shifted answer tokens), copying (share of shifted tokens found in the nearest SFT
  responses), the forgetting forecast KL(base || tuned), and training time.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("eval_loss", "eval loss (scenes)", "{:.3f}"),
    ("play_own", "play-style, own prompt", "{:.0%}"),
    ("play_other", "play-style, other prompts", "{:.0%}"),
    ("style_share", "SFT-style (classifier)", "{:.0%}"),
    ("delta_adherence", "Δ adherence", "{:+.3f}"),
    ("ead_kept_per_input", "EAD kept, per input", "{:.0%}"),
    ("ead_kept_across", "EAD kept, across", "{:.0%}"),
    ("delta_embedding_div", "Δ embedding div., per input", "{:+.3f}"),
    ("rouge_l", "ROUGE-L (Alpaca)", "{:.3f}"),
    ("delta_ppl", "Δ perplexity (WikiText-2)", "{:+.1%}"),
    ("piqa", "PIQA acc", "{:.1%}"),
    ("shifted", "shifted tokens", "{:.0%}"),
    ("copied", "shifted tokens copied", "{:.0%}"),
    ("forecast", "forecast KL(base‖tuned)", "{:.3f}"),
    ("train_seconds", "train time (s)", "{:.0f}"),
)


def run_row(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """One run's measures, and the base's (the same in every run's audit); None when unfinished."""
    report_file, row_file = run_dir / "audit" / "report.json", run_dir / "row.json"
    if not (report_file.is_file() and row_file.is_file()):
        return None
    doc = json.loads(report_file.read_text(encoding="utf-8"))
    row = json.loads(row_file.read_text(encoding="utf-8"))
    sec, base = doc["sections"], doc["base"]
    tuned = next(m for m in doc["models"] if m != base)

    def own(m: str) -> dict[str, Any]:
        """What every model has, the base included."""
        return {"play_own": sec["scene_style"]["models"][m]["own_prompt"],
                "play_other": sec["scene_style"]["models"][m]["other_prompts"],
                "style_share": sec["style"]["capture"]["models"][m]["value"],
                "rouge_l": sec["task"]["models"][m]["rouge_l"],
                "piqa": sec["forgetting"]["multiple_choice"]["piqa_200"][m]["accuracy"],
                "embedding_div": sec["diversity"]["models"][m]["per_input"]["embedding_diversity"]["mean"]}

    tuned_m, base_m = own(tuned), own(base)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    base_m["eval_loss"] = summary.get("eval_loss_first")  # the base's eval loss, before the first step
    tuned_m.update(
        eval_loss=row.get("eval_loss"),
        delta_adherence=sec["style"]["adherence"]["deltas"][tuned]["delta"],
        ead_kept_per_input=row.get("diversity_kept_per_input"),
        ead_kept_across=row.get("diversity_kept_across_input"),
        delta_embedding_div=tuned_m["embedding_div"] - base_m["embedding_div"],
        delta_ppl=sec["forgetting"]["perplexity"]["wikitext_excerpt"][tuned]["relative_change"],
        shifted=sec["shift"]["models"][tuned]["class_fraction"]["shifted"],
        copied=sec["copying"]["models"][tuned]["shifted_copy_rate"],
        forecast=sec["forecast"]["models"][tuned]["forward"]["mean"],
        train_seconds=row.get("train_seconds"),
    )
    return tuned_m, base_m


def _cell(fmt: str, values: list[float]) -> str:
    if not values:
        return "–"
    text = fmt.format(statistics.fmean(values))
    return text + (" ± " + fmt.format(statistics.stdev(values)).lstrip("+") if len(values) > 1 else "")


def table(demo: Path) -> tuple[str, dict[str, Any]]:
    """The Markdown table and its data: the base, then one row per strategy (mean ± std over seeds)."""
    runs = demo / "sweep" / "runs"
    data: dict[str, Any] = {"base": {}, "strategies": {}}
    for strategy_dir in sorted(p for p in runs.iterdir() if p.is_dir()):
        rows = [r for r in (run_row(d) for d in sorted(strategy_dir.glob("seed*"))) if r is not None]
        if rows:
            data["base"] = data["base"] or rows[0][1]
            data["strategies"][strategy_dir.name] = {
                k: [r[0][k] for r in rows if r[0].get(k) is not None] for k, _, _ in COLUMNS}
            data["strategies"][strategy_dir.name]["seeds"] = len(rows)
    lines = ["| strategy | seeds | " + " | ".join(label for _, label, _ in COLUMNS) + " |",
             "|---|---:|" + "---:|" * len(COLUMNS),
             "| base | – | " + " | ".join(fmt.format(data["base"][k]) if data["base"].get(k) is not None else "–"
                                        for k, _, fmt in COLUMNS) + " |"]
    for name, s in data["strategies"].items():
        lines.append(f"| {name} | {s['seeds']} | " + " | ".join(_cell(fmt, s[k]) for k, _, fmt in COLUMNS) + " |")
    return "\n".join(lines), data


def main() -> None:
    """Print the table; ``--json`` also writes its data."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    text, data = table(args.demo)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(data, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
