"""The output head and its loss as a bf16 training step runs them: bf16 logits read unshifted, against a
float32 copy of them and a shifted slice.

Both take the scored positions' hidden states (the scored-positions head's [1, N+1, d] rows, under bf16
autocast) through a SmolLM2-shaped output head (49,152 x 576, float32 master weight) into the sliced
cross-entropy, forward and backward to the hidden states and the head's weight:

* **peer**, what sftlab's step did before: accelerate's mixed-precision wrapper casts the model's bf16
  logits to float32 (``ConvertOutputsToFp32``), and the loss slices off the last position
  (``logits[:, :-1]``), whose backward zero-fills a [1, N+1, V] gradient and copies the slice's in;
* **sftlab**: the logits stay bf16 (``keep_autocast_outputs``) and the loss reads them unshifted, each
  row's last position given no target (``next_token_targets``).

Same values: bf16 to float32 is exact, and the loss computes in float32 either way; the script checks
that the gradients are equal. Interleaved round by round in this process, median seconds.

    .venv/bin/python bench/head_loss.py --rows 297 1024 --rounds 7 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sftlab.models.tokens import IGNORE_INDEX
from sftlab.train.losses import SlicedCrossEntropy, cross_entropy


def peer(head: torch.nn.Linear, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(hidden)
    logits = logits.float()  # accelerate's output cast
    shift_logits, shift_labels = logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1)
    denom = (shift_labels != IGNORE_INDEX).sum()
    return SlicedCrossEntropy.apply(shift_logits, shift_labels, denom, 0.0)


def sftlab(head: torch.nn.Linear, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(hidden)
    return cross_entropy(logits, labels)


def measure(fn, head: torch.nn.Linear, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    """Seconds of one forward + backward, and the gradients (hidden states, head weight)."""
    hidden.grad = head.weight.grad = None
    start = time.perf_counter()
    fn(head, hidden, labels).backward()
    return time.perf_counter() - start, [hidden.grad, head.weight.grad]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[297, 1024], help="scored positions N")
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--width", type=int, default=576)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(args.width, args.vocab, bias=False)
    torch.nn.init.normal_(head.weight, std=0.04, generator=generator)
    ways = {"peer": peer, "sftlab": sftlab}
    print(f"V = {args.vocab}, d = {args.width}, bf16 autocast, {args.threads} threads, "
          f"median of {args.rounds} rounds after one warm-up")
    for rows in args.rows:
        hidden = torch.randn(1, rows + 1, args.width, generator=generator).requires_grad_()
        labels = torch.cat([torch.tensor([[IGNORE_INDEX]]), torch.randint(0, args.vocab, (1, rows), generator=generator)], 1)
        times: dict[str, list[float]] = {way: [] for way in ways}
        grads = {}
        for rnd in range(args.rounds + 1):
            for way, fn in ways.items():
                seconds, grads[way] = measure(fn, head, hidden, labels)
                if rnd:
                    times[way].append(seconds)
        equal = all(torch.equal(a, b) for a, b in zip(grads["peer"], grads["sftlab"]))
        ratio = statistics.median(a / b for a, b in zip(times["peer"], times["sftlab"]))
        print(f"N = {rows:5d}: peer {statistics.median(times['peer']):.3f} s, sftlab {statistics.median(times['sftlab']):.3f} s; "
              f"peer / sftlab per round: median {ratio:.2f}x (range {min(a / b for a, b in zip(*times.values())):.2f}-"
              f"{max(a / b for a, b in zip(*times.values())):.2f}); gradients equal: {equal}")


if __name__ == "__main__":
    main()
