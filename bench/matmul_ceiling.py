"""How fast SmolLM2's block matmuls run at a training step's shapes, and the tokens/s that caps.

A full fine-tuning step multiplies every projection three times: the forward ``x @ W.T``, the input
gradient ``dy @ W`` and the weight gradient ``dy.T @ x``. This times each of the seven projections of a
Llama block (q, k, v, o, gate, up, down) at SmolLM2-135M's sizes, in bf16, for ``rows`` = batch x
sequence, and sets each rate beside a 2048 x 2048 bf16 matmul timed in the same loop (the machine's rate
drifts from minute to minute, so a ratio to a peer timed alongside is what carries over).

The sum over the 30 blocks is the time of the block matmuls alone: no attention, no output head, no
elementwise work, no optimizer. ``real_tokens / that time`` is therefore an upper bound on the training
rate at that batch shape, whatever else is removed from the step. ``--scored-fraction`` adds the tied
output head's three products (49,152 x 576) over the scored rows only, as the scored-positions head runs
them (297 of 768 rows for Alpaca at 8 x 96), for a second, tighter bound.

    .venv/bin/python bench/matmul_ceiling.py --rows 768 1536 3072 --real-fraction 0.841 --scored-fraction 0.387
"""

from __future__ import annotations

import argparse
import time

import torch

HIDDEN, KV, MLP, LAYERS, VOCAB = 576, 192, 1536, 30, 49152  # SmolLM2-135M: 9 query heads and 3 key/value heads of 64
PROJECTIONS = {"q": (HIDDEN, HIDDEN), "k": (HIDDEN, KV), "v": (HIDDEN, KV), "o": (HIDDEN, HIDDEN),
               "gate": (HIDDEN, MLP), "up": (HIDDEN, MLP), "down": (MLP, HIDDEN)}  # (in, out)


def seconds(fn, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, after two untimed ones."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def block_matmuls(rows: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """The three products of each projection at ``rows`` rows, laid out as autograd computes them."""
    products = []
    for name, (d_in, d_out) in PROJECTIONS.items():
        x = torch.randn(rows, d_in, dtype=torch.bfloat16)
        weight = torch.randn(d_out, d_in, dtype=torch.bfloat16)
        grad = torch.randn(rows, d_out, dtype=torch.bfloat16)
        products += [(f"{name} forward", x, weight.t()), (f"{name} input grad", grad, weight),
                     (f"{name} weight grad", grad.t(), x)]
    return products


def head_matmuls(rows: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """The output head's three products over ``rows`` scored rows (the tied embedding as its weight)."""
    x = torch.randn(rows, HIDDEN, dtype=torch.bfloat16)
    weight = torch.randn(VOCAB, HIDDEN, dtype=torch.bfloat16)
    grad = torch.randn(rows, VOCAB, dtype=torch.bfloat16)
    return [("head forward", x, weight.t()), ("head input grad", grad, weight), ("head weight grad", grad.t(), x)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[768, 1536, 3072], help="batch x sequence")
    p.add_argument("--real-fraction", type=float, default=646 / 768,
                   help="non-padding share of the rows (646 of 768 for Alpaca at 8 x 96)")
    p.add_argument("--scored-fraction", type=float,
                   help="also time the output head over this share of the rows (0.387: 297 of 768 at 8 x 96)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    square = torch.randn(2048, 2048, dtype=torch.bfloat16)
    print(f"{'rows':>5} {'block matmuls / step':>21} {'GFLOP/s':>8} {'of 2048^2':>9} {'ceiling tok/s':>14}")
    for rows in args.rows:
        total_s = total_flop = 0.0
        peer = []
        for _, a, b in block_matmuls(rows):
            peer.append(2 * 2048**3 / seconds(lambda: square @ square, 3))  # the peer, alongside each product
            total_s += seconds(lambda a=a, b=b: a @ b, args.repeats)
            total_flop += 2 * a.shape[0] * a.shape[1] * b.shape[1]
        step_s, rate = LAYERS * total_s, total_flop / total_s
        peer_rate = sorted(peer)[len(peer) // 2]
        print(f"{rows:5d} {step_s:20.3f}s {rate / 1e9:8.0f} {rate / peer_rate:8.0%} "
              f"{rows * args.real_fraction / step_s:14.0f}   (2048^2 median {peer_rate / 1e9:.0f} GFLOP/s)")
        if args.scored_fraction:
            scored = round(rows * args.scored_fraction)
            head_s = sum(seconds(lambda a=a, b=b: a @ b, args.repeats) for _, a, b in head_matmuls(scored))
            print(f"{'':5s} + output head over {scored} scored rows: {head_s:.3f}s, blocks and head "
                  f"{step_s + head_s:.3f}s, ceiling {rows * args.real_fraction / (step_s + head_s):.0f} tok/s")


if __name__ == "__main__":
    main()
