"""The cost of dithered bf16 weights per step: rounding SmolLM2's trained weights in place and rebuilding
their fp32 masters, sliced (sftlab's ``SLICE`` elements at a time) against whole tensors.

Both run in this process on tensors of SmolLM2-135M's linear weights (30 blocks' seven projections and
the tied 49,152 x 576 embedding: 134.5M weights), interleaved round by round so that machine load hits
both alike. Reports each variant's median seconds to round and to restore, and the minor page faults a
round-and-restore costs (a fresh temporary that glibc maps for the call is faulted in page by page).

``--trainer`` also times whole training steps (the trainer `sftlab train` builds, bench/train_throughput.py's
setup: SmolLM2 full FT, 8 x 96 Alpaca rows, bf16 with dithered weights) with each slice size, each in its
own process.

    .venv/bin/python bench/weight_rounding.py --rounds 5 --threads 2 [--trainer]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from sftlab.train import weight_rounding
from sftlab.train.weight_rounding import restore_master, round_in_place, thresholds

HIDDEN, KV, MLP, LAYERS, VOCAB = 576, 192, 1536, 30, 49152  # SmolLM2-135M
SHAPES = [(HIDDEN, HIDDEN), (KV, HIDDEN), (KV, HIDDEN), (HIDDEN, HIDDEN),  # q, k, v, o as (out, in)
          (MLP, HIDDEN), (MLP, HIDDEN), (HIDDEN, MLP)] * LAYERS + [(VOCAB, HIDDEN)]  # gate, up, down; embedding
WHOLE = 1 << 62  # a slice longer than any tensor: each is processed whole


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_kernels(args: argparse.Namespace) -> None:
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(shape, generator=generator) * 0.05 for shape in SHAPES]
    masters = [p.clone() for p in params]
    offsets = list(thresholds(params, 0))
    remainders = [torch.empty(p.shape, dtype=torch.int16) for p in params]
    variants = {f"sliced ({weight_rounding.SLICE:,} elements)": weight_rounding.SLICE, "whole tensors": WHOLE}
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in variants}
    for rnd in range(args.rounds + 1):  # the first round warms both up and is not counted
        for name, size in variants.items():
            weight_rounding.SLICE = size
            start_faults, start = faults(), time.perf_counter()
            for p, o, r in zip(params, offsets, remainders):
                round_in_place(p, o, r)
            rounded = time.perf_counter()
            for p, o, r in zip(params, offsets, remainders):
                restore_master(p, o, r)
            if rnd:
                results[name].append((rounded - start, time.perf_counter() - rounded, faults() - start_faults))
    assert all(torch.equal(p.view(torch.int32), m.view(torch.int32)) for p, m in zip(params, masters))
    print(f"{sum(p.numel() for p in params) / 1e6:.1f}M weights in {len(params)} tensors, {args.threads} threads, "
          f"median of {args.rounds} rounds (every master rebuilt bit for bit)")
    print(f"{'variant':32s} {'round s':>8s} {'restore s':>10s} {'page faults':>12s}")
    for name, rows in results.items():
        r, s, f = (statistics.median(col) for col in zip(*rows))
        print(f"{name:32s} {r:8.3f} {s:10.3f} {f:12.0f}")
    whole = [a + b for a, b, _ in results["whole tensors"]]
    sliced = [a + b for a, b, _ in next(iter(results.values()))]
    print(f"whole / sliced, round + restore, per round: {', '.join(f'{w / s:.2f}x' for w, s in zip(whole, sliced))} "
          f"(median {statistics.median(w / s for w, s in zip(whole, sliced)):.2f}x)")


def trainer_child(args: argparse.Namespace) -> None:
    """One trainer measurement with ``SLICE = args.child``; prints one JSON line."""
    sys.path.insert(0, str(Path(__file__).parent))
    import tempfile

    from common import StepTimer
    from train_throughput import make_setup, sftlab_trainer
    from transformers import TrainerCallback, TrainerState

    weight_rounding.SLICE = args.child
    args.model, args.records, args.seq, args.batch, args.fraction_lengths = "smollm2-135m-instruct", 64, 96, 8, []
    setup = make_setup(Path(tempfile.mkdtemp(prefix="sftlab-bench-")), args)
    timer = StepTimer(args.warmup, args.steps)
    trainer = sftlab_trainer(setup, args, timer, packing=False)
    assert trainer.weight_dither is not None, "this machine trains SmolLM2 in fp32: nothing is dithered"
    counted: dict[str, int] = {}

    class FaultCount(TrainerCallback):
        """Page faults over the timed steps only (the first steps also fault in the optimizer's state)."""

        def on_step_end(self, a: object, state: TrainerState, control: object, **kw: object) -> None:
            if state.global_step in (args.warmup, args.warmup + args.steps):
                counted[str(state.global_step)] = faults()

    trainer.add_callback(FaultCount())
    trainer.train()
    seconds, tokens = timer.result
    per_step = (counted[str(args.warmup + args.steps)] - counted[str(args.warmup)]) / args.steps
    print(json.dumps({"tokens_per_s": tokens / seconds, "faults_per_step": per_step}))


def time_trainer(args: argparse.Namespace) -> None:
    variants = {"sliced": weight_rounding.SLICE, "whole tensors": WHOLE}
    speeds: dict[str, list[float]] = {name: [] for name in variants}
    for rnd in range(args.rounds):
        for name, size in variants.items():
            out = subprocess.run([sys.executable, __file__, f"--threads={args.threads}", f"--steps={args.steps}",
                                  f"--warmup={args.warmup}", f"--child={size}"], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            speeds[name].append(row["tokens_per_s"])
            print(f"trainer round {rnd + 1} {name:14s} {row['tokens_per_s']:7.1f} tok/s, "
                  f"{row['faults_per_step']:8.0f} page faults/step", flush=True)
    ratios = [s / w for s, w in zip(speeds["sliced"], speeds["whole tensors"])]
    print(f"trainer, sliced / whole tokens/s per round: {', '.join(f'{x:.2f}x' for x in ratios)} "
          f"(median {statistics.median(ratios):.2f}x)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--trainer", action="store_true", help="also time training steps with each slice size")
    p.add_argument("--steps", type=int, default=6, help="timed trainer steps (--trainer)")
    p.add_argument("--warmup", type=int, default=2, help="untimed trainer steps (--trainer)")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        trainer_child(args)
        return
    time_kernels(args)
    if args.trainer:
        time_trainer(args)


if __name__ == "__main__":
    main()
