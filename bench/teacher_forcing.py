"""The audit's teacher forcing on a real vocabulary: head on the scored positions and float32 work in row
slices, against the whole batch's logits in float32 at once.

Three of the audit's scorers, on SmolLM2-135M-Instruct (V = 49,152) by default, each run two ways in this
process, interleaved round by round:

* **sftlab**: :mod:`sftlab.audit.teacher_forcing` as the audit runs it: the output head sees only the
  hidden states that predict a continuation token, and every vocabulary-wide float32 computation (the
  log-softmax, the shift's rank comparison and KL terms) runs a slice of rows at a time (64 rows here, as
  the training loss slices them);
* **peer**: what the audit did before, and what a plain implementation does: the model's logits over the
  whole padded batch, the scored rows indexed from them, then the same float32 math over all rows at once.

The workloads, with random token ids (shapes are what matter; the two ways are checked to agree):

* ``shift``: :func:`sftlab.audit.shift.position_scores` for a batch of 8 answers of 128 tokens after
  48-token chat contexts, tuned and base models both teacher-forced (here the same model twice);
* ``choice``: :func:`sftlab.audit.teacher_forcing.continuation_logprobs` for a batch of 16 multiple-choice
  pairs, 40-token contexts and 12-token answers (PIQA's shape);
* ``perplexity``: the same for 8 windows of 256 tokens, every position scored (so the head saves nothing
  and only the slicing acts).

Reported per workload: median seconds, the peak RSS above the start (``VmHWM`` after a reset), minor page
faults, and the largest gap between the two ways' figures.

    .venv/bin/python bench/teacher_forcing.py --rounds 3 --threads 2
    .venv/bin/python bench/teacher_forcing.py --dtype bfloat16 --rounds 3 --threads 2   # under bf16 autocast
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from common import Quiet, reset_peak_rss, rss_mb  # first: it puts the process offline before any HF library loads

import torch  # noqa: E402

from sftlab.audit.shift import position_scores  # noqa: E402
from sftlab.audit.teacher_forcing import (  # noqa: E402
    continuation_logits,
    continuation_logprobs,
    in_row_slices,
    right_pad,
)
from sftlab.errors import UserError  # noqa: E402
from sftlab.models.load import load_model  # noqa: E402

Workload = tuple[list[list[int]], list[list[int]]]


def peer_logits(model, contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]) -> torch.Tensor:
    """The whole padded batch's logits, then the rows predicting each continuation token."""
    ids, mask = right_pad([list(c) + list(a) for c, a in zip(contexts, continuations)], 0, torch.device("cpu"))
    logits = model(input_ids=ids, attention_mask=mask).logits
    rows = [r for r, a in enumerate(continuations) for _ in a]
    cols = [p for c, a in zip(contexts, continuations) for p in range(len(c) - 1, len(c) - 1 + len(a))]
    return logits[torch.tensor(rows), torch.tensor(cols)]


def peer_logprobs(model, contexts, continuations) -> torch.Tensor:
    logits = peer_logits(model, contexts, continuations)
    targets = torch.tensor([t for a in continuations for t in a])
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def sftlab_logprobs(model, contexts, continuations) -> torch.Tensor:
    return torch.cat(continuation_logprobs(model, contexts, continuations, pad_id=0))


def peer_shift(model, contexts, continuations) -> torch.Tensor:
    logits = peer_logits(model, contexts, continuations)
    tokens = torch.tensor([t for a in continuations for t in a])
    return position_scores(logits, peer_logits(model, contexts, continuations), tokens)["kl"]


def sftlab_shift(model, contexts, continuations) -> torch.Tensor:
    logits = continuation_logits(model, contexts, continuations, pad_id=0)
    tokens = torch.tensor([t for a in continuations for t in a])
    return in_row_slices(position_scores, logits, continuation_logits(model, contexts, continuations, 0), tokens)["kl"]


WAYS: dict[str, dict[str, Callable[..., torch.Tensor]]] = {
    "shift": {"peer": peer_shift, "sftlab": sftlab_shift},
    "choice": {"peer": peer_logprobs, "sftlab": sftlab_logprobs},
    "perplexity": {"peer": peer_logprobs, "sftlab": sftlab_logprobs},
}


def workload(name: str, vocab: int) -> Workload:
    """Contexts and continuations of the workload's shape, random ids from a fixed seed."""
    count, context, answer = {"shift": (8, 48, 128), "choice": (16, 40, 12), "perplexity": (8, 1, 255)}[name]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (count, context + answer), generator=gen).tolist()
    return [row[:context] for row in ids], [row[context:] for row in ids]


def measure(fn: Callable[..., torch.Tensor], model, data: Workload, autocast: bool) -> tuple[float, float, int, torch.Tensor]:
    """Seconds, peak RSS above the start (MB), minor page faults, and the figures of one call."""
    reset_peak_rss()
    start_rss, faults = rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    started = time.perf_counter()
    with torch.no_grad(), cast:
        out = fn(model, *data)
    seconds = time.perf_counter() - started
    return seconds, rss_mb("VmHWM") - start_rss, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="a built-in name, model dir or .gguf")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="float32, or the fp32 model under bf16 autocast (what `dtype: auto` gives on a bf16 CPU)")
    p.add_argument("--workloads", nargs="+", choices=list(WAYS), default=list(WAYS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    try:
        with Quiet():
            model = load_model(args.model, dtype="float32").eval()
    except UserError as exc:
        print(f"teacher_forcing.py: {exc}", file=sys.stderr)
        raise SystemExit(2) from None  # the CLI's exit status for a user error
    vocab = model.config.vocab_size
    print(f"{args.model}, V = {vocab}, {args.dtype}, {args.threads} threads, median of {args.rounds} rounds after one warm-up")
    print(f"{'workload':11s} {'way':7s} {'seconds':>8s} {'peak RSS +MB':>13s} {'page faults':>12s}")
    for name in args.workloads:
        data = workload(name, vocab)
        results: dict[str, list[tuple[float, float, int]]] = {way: [] for way in WAYS[name]}
        outputs: dict[str, torch.Tensor] = {}
        for rnd in range(args.rounds + 1):
            for way, fn in WAYS[name].items():
                seconds, peak, faults, outputs[way] = measure(fn, model, data, args.dtype == "bfloat16")
                if rnd:
                    results[way].append((seconds, peak, faults))
        for way, rows in results.items():
            s, m, f = (statistics.median(col) for col in zip(*rows))
            print(f"{name:11s} {way:7s} {s:8.3f} {m:13.0f} {f:12.0f}")
        ratio = statistics.median(a[0] / b[0] for a, b in zip(results["peer"], results["sftlab"]))
        gap = (outputs["peer"].float() - outputs["sftlab"].float()).abs().max().item()
        print(f"{name:11s} peer / sftlab, time per round: median {ratio:.2f}x; largest gap in the figures {gap:.1e}")


if __name__ == "__main__":
    main()
