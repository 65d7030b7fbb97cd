"""The training loss over a real vocabulary: sftlab's sliced cross-entropy against ``F.cross_entropy``.

Both compute the next-token cross-entropy of bf16 logits (what a bf16 autocast step's output head gives)
in float32, summed over targets and divided by their count, and its gradient: ``F.cross_entropy`` on the
float32 copy of the whole [N, V] logits, as sftlab did before (and as most trainers do), and
:class:`sftlab.train.losses.SlicedCrossEntropy`, which works ``rows_per_slice(V)`` rows (64 at SmolLM2's vocabulary) at a
time and makes only the gradient at full size. V is SmolLM2's 49,152; N the scored rows of a step (297 at
8 x 96 Alpaca rows with the scored-positions head; 2,048 and 8,192 for longer answers or bigger batches).

Per size, interleaved round by round in this process: median seconds of forward + backward, the minor
page faults they cost, and the peak RSS above the logits themselves (``VmHWM`` after a reset). The
gradients of the two are compared too (at most one bf16 step apart).

    .venv/bin/python bench/cross_entropy.py --rows 297 2048 8192 --rounds 5 --threads 2
    .venv/bin/python bench/cross_entropy.py --vocab 512 --rows 4096 --dtype float32 --threads 2   # a tiny model's
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from common import reset_peak_rss, rss_mb  # first: it puts the process offline before any HF library loads

from sftlab.models.tokens import IGNORE_INDEX, rows_per_slice  # noqa: E402
from sftlab.train.losses import SlicedCrossEntropy  # noqa: E402


def torch_loss(logits: torch.Tensor, targets: torch.Tensor, denom: int) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum") / denom


def sliced_loss(logits: torch.Tensor, targets: torch.Tensor, denom: int) -> torch.Tensor:
    return SlicedCrossEntropy.apply(logits, targets, denom, 0.0)


def measure(fn, logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, int, float, torch.Tensor]:
    """Seconds, page faults and peak RSS (MB above the start) of one forward + backward; the gradient."""
    logits.grad = None
    reset_peak_rss()
    base = rss_mb("VmRSS")
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    fn(logits, targets, targets.numel()).backward()
    seconds = time.perf_counter() - start
    return (seconds, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults, rss_mb("VmHWM") - base,
            logits.grad)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[297, 2048, 8192])
    p.add_argument("--vocab", type=int, default=49152, help="vocabulary size (SmolLM2's by default)")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16",
                   help="the logits' dtype: bf16 under autocast; float32 for a model trained in fp32")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    variants = {"F.cross_entropy": torch_loss, f"sliced ({rows_per_slice(args.vocab)} rows)": sliced_loss}
    print(f"V = {args.vocab}, {args.dtype} logits, {args.threads} threads, median of {args.rounds} rounds after one warm-up")
    print(f"{'rows':>5} {'variant':22s} {'fwd+bwd s':>10s} {'page faults':>12s} {'peak RSS +MB':>13s}")
    for rows in args.rows:
        generator = torch.Generator().manual_seed(0)
        logits = (2 * torch.randn(rows, args.vocab, generator=generator)).to(getattr(torch, args.dtype))
        logits.requires_grad_()
        targets = torch.randint(0, args.vocab, (rows,), generator=generator)
        results: dict[str, list[tuple[float, int, float]]] = {name: [] for name in variants}
        grads = {}
        for rnd in range(args.rounds + 1):
            for name, fn in variants.items():
                seconds, faults, peak, grads[name] = measure(fn, logits, targets)
                if rnd:
                    results[name].append((seconds, faults, peak))
        reference, sliced = (g.float() for g in grads.values())
        gap = ((reference - sliced).abs() / reference.abs().clamp(min=1e-30)).max().item()
        times = {}
        for name, rows_ in results.items():
            s, f, m = (statistics.median(col) for col in zip(*rows_))
            times[name] = [r[0] for r in rows_]
            print(f"{rows:5d} {name:22s} {s:10.3f} {f:12.0f} {m:13.0f}")
        ratio = statistics.median(a / b for a, b in zip(*times.values()))
        print(f"{rows:5d} F.cross_entropy / sliced, time per round: median {ratio:.2f}x; "
              f"largest relative gradient gap {gap:.1e}")


if __name__ == "__main__":
    main()
