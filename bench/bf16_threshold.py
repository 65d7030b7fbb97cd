"""Where bf16 autocast starts to pay on this CPU: one training step, fp32 against bf16, by model width.

Random-init Llama decoders (4 layers, 2k vocabulary, SwiGLU at 8/3 width) of several widths, plus
SmolLM2-135M-Instruct itself when it is installed; the same batch of 8 rows of 96 tokens, completion-only
labels (the first 40 positions masked) through sftlab's scored-positions head, cross-entropy, backward and an
AdamW step. fp32 and bf16 alternate step by step, so machine load hits both alike; the figure is the ratio
of median step times. ``dtype: auto`` (``sftlab.models.load.resolve_dtype``) encodes the threshold found here.

Run:  .venv/bin/python bench/bf16_threshold.py [--widths 64 128 288 576] [--steps 6] [--threads 1] [--real]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import common  # noqa: F401 - offline mode before transformers loads


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", nargs="*", type=int, default=[64, 128, 288, 576])
    p.add_argument("--steps", type=int, default=6, help="timed steps per dtype (after one warm-up each)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--real", action="store_true", help="also SmolLM2-135M-Instruct (30 layers, 49k vocabulary)")
    return p.parse_args()


def step_fn(model: Any, bf16: bool, batch: int = 8, seq: int = 96) -> Any:
    """One optimizer step on a fixed random batch, under bf16 autocast or none."""
    import torch

    from sftlab.train.losses import cross_entropy
    from sftlab.train.head_outputs import scored_positions_only

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen)
    labels = ids.clone()
    labels[:, :40] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    head = model.get_output_embeddings()

    def step() -> float:
        with scored_positions_only(head, labels) as lab, torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = cross_entropy(model(input_ids=ids).logits, lab)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def measure(name: str, make_model: Any, steps: int) -> None:
    """Alternate fp32 and bf16 steps on two copies of one model; print median step times and their ratio."""
    import copy

    fp32_model = make_model()
    bf16_model = copy.deepcopy(fp32_model)
    fp32_model.train()
    bf16_model.train()
    fns = {False: step_fn(fp32_model, False), True: step_fn(bf16_model, True)}
    for fn in fns.values():
        fn()  # warm-up: allocator, oneDNN kernel selection
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(steps):
        for bf16, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[bf16].append(time.perf_counter() - t)
    fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
    params = sum(p.numel() for p in fp32_model.parameters())
    print(f"{name:34s} {params / 1e6:7.2f}M  fp32 {fp32 * 1e3:8.1f} ms  bf16 {bf16 * 1e3:8.1f} ms  "
          f"fp32/bf16 {fp32 / bf16:5.2f}x", flush=True)


def main() -> None:
    args = parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    from sftlab.models.tiny import build_config

    torch.set_num_threads(args.threads)
    capabilities = torch.cpu.get_capabilities()
    print(f"torch {torch.__version__}, {args.threads} threads, AMX bf16: {capabilities.get('amx_bf16', False)}, "
          f"AVX512-BF16: {capabilities.get('avx512_bf16', False)}", flush=True)
    for width in args.widths:
        def make(width: int = width) -> Any:
            torch.manual_seed(0)
            heads = max(1, width // 64) if width % 64 == 0 else 4
            config = build_config(2048, "llama", "tiny", max_position_embeddings=128, n_layer=4, n_embd=width,
                                  n_head=heads)
            return AutoModelForCausalLM.from_config(config)
        measure(f"llama width {width}, 4 layers", make, args.steps)
    if args.real:
        from sftlab.models.builtin import resolve_model_source

        path = resolve_model_source("smollm2-135m-instruct")
        measure("SmolLM2-135M-Instruct", lambda: AutoModelForCausalLM.from_pretrained(path), args.steps)


if __name__ == "__main__":
    main()
