"""Plot a seed table (``OUT/seed_table.json`` from ``examples/seed_sweep.py``): one panel per measure, the
strategies placed on a numeric x axis, each run as a light dot and the mean over seeds with its 95%
Student-t interval as a bar.

Usage (from the repo root)::

    .venv/bin/python examples/plot_seed_table.py runs/neftune_strength/seed_table.json \\
        --x alpha0=0 alpha5=5 alpha10=10 alpha15=15 --xlabel "NEFTune alpha" \\
        --measures eval_loss rouge_l bleu answer_words --out docs/img/neftune_strength.png
    .venv/bin/python examples/plot_seed_table.py runs/data_scaling/seed_table.json \\
        --x lora_1x=30:LoRA lora_4x=120:LoRA lora_16x=480:LoRA full_1x=30:full full_4x=120:full \\
            full_16x=480:full --logx --xlabel "training records" \\
        --measures eval_loss rouge_l delta_perplexity benchmark_accuracy --out docs/img/data_scaling.png

``--x NAME=VALUE[:SERIES]`` places strategy NAME at x = VALUE, in the line SERIES (one line when no series
is named). The base's value, where the table records one (``base_<measure>``), is drawn as a dashed line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NoReturn

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_sweep import MEASURES  # noqa: E402

LABELS = {key: label for key, label, _ in MEASURES}


def fail(message: str) -> NoReturn:
    """Stop on a user error: the message on stderr, exit status 2 (the CLI's for bad input)."""
    print(f"plot_seed_table.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_placement(items: list[str]) -> dict[str, tuple[float, str]]:
    """``NAME=VALUE[:SERIES]`` items -> {name: (x, series)}."""
    placed: dict[str, tuple[float, str]] = {}
    for item in items:
        name, _, rest = item.partition("=")
        value, _, series = rest.partition(":")
        try:
            placed[name] = (float(value), series or "")
        except ValueError:
            fail(f"--x {item!r}: expected NAME=VALUE[:SERIES] with a numeric VALUE")
    return placed


def main() -> None:
    """Draw the panels and write the image."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("table", help="seed_table.json")
    p.add_argument("--x", nargs="+", required=True, metavar="NAME=VALUE[:SERIES]")
    p.add_argument("--xlabel", default="")
    p.add_argument("--measures", nargs="+", required=True, choices=sorted(LABELS))
    p.add_argument("--logx", action="store_true")
    p.add_argument("--out", required=True, help="image to write (.png or .svg)")
    args = p.parse_args()

    if not Path(args.table).is_file():
        fail(f"no seed table at {args.table}; examples/seed_sweep.py writes OUT/seed_table.json")
    table = json.loads(Path(args.table).read_text(encoding="utf-8"))
    placed = parse_placement(args.x)
    missing = sorted(set(placed) - set(table))
    if missing:
        fail(f"{args.table} has no strategy {', '.join(missing)}; it has {', '.join(table)}")
    series = sorted({s for _, s in placed.values()})
    cols = min(len(args.measures), 2)
    rows = (len(args.measures) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), squeeze=False)
    for ax, measure in zip(axes.flat, args.measures):
        for k, line in enumerate(series):
            names = sorted((n for n, (_, s) in placed.items() if s == line), key=lambda n: placed[n][0])
            xs, means, bars = [], [], []
            color = f"C{k}"
            for name in names:
                entry = table[name]["measures"].get(measure)
                if entry is None:
                    continue
                x = placed[name][0]
                xs.append(x)
                means.append(entry["mean"])
                bars.append(entry["half_width"] or 0.0)
                runs = [r[measure] for r in table[name]["runs"].values() if r.get(measure) is not None]
                ax.scatter([x] * len(runs), runs, color=color, alpha=0.3, s=14, linewidths=0)
            if xs:
                ax.errorbar(xs, means, yerr=bars, color=color, marker="o", capsize=3, label=line or None)
        base = [r.get(f"base_{measure}") for entry in table.values() for r in entry["runs"].values()]
        base = [b for b in base if b is not None]
        if base:
            ax.axhline(sum(base) / len(base), color="grey", linestyle="--", linewidth=1, label="base")
        ax.set_title(LABELS[measure], fontsize=10)
        ax.set_xlabel(args.xlabel)
        if args.logx:
            ax.set_xscale("log")
            ax.minorticks_off()  # the log axis's minor labels would crowd the strategies' own ticks
            ticks = sorted({x for x, _ in placed.values()})
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.grid(alpha=0.3)
        if series != [""] or base:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(args.measures):]:
        ax.axis("off")
    fig.suptitle("mean over seeds with 95% t-interval; dots: single runs", fontsize=9)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
