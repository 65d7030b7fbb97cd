"""bf16 autocast against fp32 over a whole real-demo run: every training step's loss, and every audit figure
that has an interval.

The bf16 side is a finished ``sftlab demo --real`` run (its ``full`` strategy, seed 0, trained and audited
with ``dtype: auto``, which is bf16 autocast on a CPU with bf16 units, and the default ``bf16_weight_rounding: auto``,
which is dithered there). This script runs the same strategy through the
same sweep once more with ``dtype: float32`` for training and for the audit (the base is sampled and scored
in fp32 too), into ``OUT`` (default ``DEMO_OUT/fp32``), then compares:

- the train loss at each logged step (the real demo logs every step), its largest and mean relative gap,
  and the eval loss;
- each figure of the two audits' report.json that carries a 95% interval (``ci_low``/``ci_high``): whether
  the fp32 value lies inside the bf16 interval, and whether the two intervals overlap. Sampled answers
  differ between the precisions (the logits differ in their last bits, so the draws part ways), which is
  why the comparison is against intervals and not value for value.

The result is printed and written to ``OUT/agreement.json``. A rerun reuses the finished fp32 run.

With ``--bf16-weight-rounding nearest`` (or ``dithered``) the bf16 side is not the demo's own run: this
script trains and audits the strategy once more in bf16 autocast with that rounding in training and in the
audit (``OUT/bf16_<rounding>``), and needs no finished demo.

Run:  .venv/bin/python bench/bf16_demo.py --demo-out runs/demo_real [--strategy full] [--out DIR]
      .venv/bin/python bench/bf16_demo.py --bf16-weight-rounding nearest --out runs/bf16_nearest
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sftlab.offline import set_offline


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo-out", help="the out dir of a finished `sftlab demo --real` (the bf16 side)")
    p.add_argument("--bf16-weight-rounding", choices=["nearest", "dithered"], default=None,
                   help="train and audit the bf16 side here, with this rounding of the weights, instead")
    p.add_argument("--strategy", default="full", help="a trained strategy of that demo (default: full)")
    p.add_argument("--out", default=None, help="where the fp32 sweep goes (default: DEMO_OUT/fp32)")
    return p.parse_args()


def losses(run_dir: Path) -> dict[int, float]:
    """Logged train loss by step, from a run's metrics.jsonl."""
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return {m["step"]: m["loss"] for m in rows if "loss" in m}


def intervals(node: Any, path: str = "") -> dict[str, tuple[float, float, float]]:
    """Every ``{value|delta|mean, ci_low, ci_high}`` (and perplexity's ``relative_change`` with its
    ``change_ci_*``) in a report.json tree, by its path: (value, low, high)."""
    found: dict[str, tuple[float, float, float]] = {}
    if isinstance(node, dict):
        if node.get("ci_low") is not None and node.get("ci_high") is not None:
            key = next((k for k in ("value", "delta", "mean") if k in node), None)
            if key is not None and node[key] is not None:
                found[path] = (float(node[key]), float(node["ci_low"]), float(node["ci_high"]))
        if node.get("change_ci_low") is not None:  # perplexity: the relative change against the base
            found[path] = (float(node["relative_change"]), float(node["change_ci_low"]), float(node["change_ci_high"]))
        for key, child in node.items():
            if key != "per_sample":
                found.update(intervals(child, f"{path}.{key}" if path else key))
    return found


def compare(bf16_run: Path, fp32_run: Path) -> dict[str, Any]:
    """Loss curves and audit intervals of the two runs, as one JSON-able dict."""
    bf16_loss, fp32_loss = losses(bf16_run), losses(fp32_run)
    steps = sorted(set(bf16_loss) & set(fp32_loss))
    gaps = [abs(bf16_loss[s] - fp32_loss[s]) / fp32_loss[s] for s in steps]
    reports = [json.loads((run / "audit" / "report.json").read_text()) for run in (bf16_run, fp32_run)]
    # Both runs are the same strategy and seed, so their reports label the tuned model alike.
    figures_bf16, figures_fp32 = (intervals(r["sections"]) for r in reports)
    figures = []
    for path in sorted(set(figures_bf16) & set(figures_fp32)):
        b, f = figures_bf16[path], figures_fp32[path]
        figures.append({"figure": path, "bf16": b, "fp32": f, "fp32_in_bf16_interval": b[1] <= f[0] <= b[2],
                        "intervals_overlap": b[1] <= f[2] and f[1] <= b[2]})
    rows = [json.loads((run / "row.json").read_text()) for run in (bf16_run, fp32_run)]
    return {
        "steps": steps,
        "loss": {"bf16": [bf16_loss[s] for s in steps], "fp32": [fp32_loss[s] for s in steps]},
        "largest_relative_gap": max(gaps), "mean_relative_gap": sum(gaps) / len(gaps),
        "steps_within_1pct": sum(g <= 0.01 for g in gaps),
        "eval_loss": {"bf16": rows[0]["eval_loss"], "fp32": rows[1]["eval_loss"]},
        "train_seconds": {"bf16": rows[0]["train_seconds"], "fp32": rows[1]["train_seconds"]},
        "row": {key: {"bf16": rows[0][key], "fp32": rows[1].get(key)} for key in rows[0]
                if isinstance(rows[0][key], float) and key != "train_seconds"},
        "figures": figures,
        "figures_fp32_in_bf16_interval": sum(f["fp32_in_bf16_interval"] for f in figures),
        "figures_overlapping": sum(f["intervals_overlap"] for f in figures),
    }


def main() -> None:
    args = parse_args()
    set_offline()  # before transformers loads: nothing is downloaded
    from sftlab.config import SweepConfig, build_config
    from sftlab.recipes.demo import placeholder_values, sweep_data
    from sftlab.recipes.demo_plan import builtin_plan, select_strategies
    from sftlab.recipes.demo_real import scene_style_section
    from sftlab.recipes.sweep import run_sweep

    plan = builtin_plan(real=True, quick=False)

    def sweep(out: Path, train: dict[str, Any], audit: dict[str, Any]) -> Path:
        """The strategy through the real demo's sweep into ``out``, with these train and audit keys; its run dir."""
        data = sweep_data(plan, select_strategies(plan.strategies, args.strategy), out, placeholder_values(plan, out))
        data["train"] = {**data["train"], **train}
        data["audit"] = {**data["audit"], **audit}
        run_sweep(build_config(SweepConfig, data, source="bf16_demo"), extra_sections=[scene_style_section()],
                  redo_stale=True)
        return out / "sweep" / "runs" / args.strategy / "seed0"

    if args.bf16_weight_rounding is not None:
        if not args.out:
            print("bf16_demo.py: --bf16-weight-rounding needs --out", file=sys.stderr)
            raise SystemExit(2)
        out = Path(args.out)
        fp32_out = out / "fp32"
        rounding = {"bf16_weight_rounding": args.bf16_weight_rounding}
        bf16_run = sweep(out / f"bf16_{args.bf16_weight_rounding}", rounding, rounding)
    else:
        if not args.demo_out:
            print("bf16_demo.py: give --demo-out (or --bf16-weight-rounding)", file=sys.stderr)
            raise SystemExit(2)
        bf16_run = Path(args.demo_out) / "sweep" / "runs" / args.strategy / "seed0"
        if not (bf16_run / "row.json").is_file():
            print(f"bf16_demo.py: {bf16_run} is not a finished run; run `sftlab demo --real` first", file=sys.stderr)
            raise SystemExit(2)
        out = fp32_out = Path(args.out) if args.out else Path(args.demo_out) / "fp32"
    result = compare(bf16_run, sweep(fp32_out, {"dtype": "float32"}, {"dtype": "float32"}))
    (out / "agreement.json").write_text(json.dumps(result, indent=1))

    print(f"{'step':>4} {'bf16':>8} {'fp32':>8}  gap")
    for step, b, f in zip(result["steps"], result["loss"]["bf16"], result["loss"]["fp32"]):
        print(f"{step:4d} {b:8.4f} {f:8.4f}  {abs(b - f) / f:.2%}")
    print(f"largest relative gap {result['largest_relative_gap']:.2%}, mean {result['mean_relative_gap']:.2%}; "
          f"{result['steps_within_1pct']} of {len(result['steps'])} steps within 1%")
    print(f"eval loss bf16 {result['eval_loss']['bf16']:.4f}, fp32 {result['eval_loss']['fp32']:.4f}; "
          f"train seconds bf16 {result['train_seconds']['bf16']:.0f}, fp32 {result['train_seconds']['fp32']:.0f}")
    print(f"\n{'sweep row':30s} {'bf16':>9s} {'fp32':>9s}")
    for key, pair in result["row"].items():
        print(f"{key:30s} {pair['bf16']:9.4f} {pair['fp32']:9.4f}")
    print(f"\n{'figure':70s} {'bf16 [95% interval]':>28s} {'fp32 [95% interval]':>28s}  in / overlap")
    for fig in result["figures"]:
        (b, bl, bh), (f, fl, fh) = fig["bf16"], fig["fp32"]
        print(f"{fig['figure'][:70]:70s} {b:8.4f} [{bl:8.4f}, {bh:8.4f}] {f:8.4f} [{fl:8.4f}, {fh:8.4f}]  "
              f"{'yes' if fig['fp32_in_bf16_interval'] else 'NO '} / {'yes' if fig['intervals_overlap'] else 'NO'}")
    n = len(result["figures"])
    print(f"\n{result['figures_fp32_in_bf16_interval']} of {n} fp32 figures inside the bf16 interval; "
          f"{result['figures_overlapping']} of {n} interval pairs overlap")


if __name__ == "__main__":
    main()
