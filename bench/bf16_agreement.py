"""bf16 autocast against fp32 on a real base: the training loss curve, step by step, through `sftlab train`.

Two runs of the real recipe (``prepare_train`` / ``finish_train``) from the same weights, on the same Alpaca
records in the same order (same seed), differing only in ``dtype`` (float32, then auto, which is bf16 on
an AMX CPU); every step's train loss is logged. Prints both curves, the largest relative gap and each
run's seconds per step. ``--profile`` then profiles one more bf16 step (torch.profiler, top ops by
self CPU time).

Run:  .venv/bin/python bench/bf16_agreement.py [--model smollm2-135m-instruct] [--steps 8] [--batch 4] [--seq 96]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import Quiet, load_average, shared_data


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=96)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", action="store_true")
    return p.parse_args()


def run(args: argparse.Namespace, work: Path, data_file: Path, dtype: str) -> tuple[list[float], float, str]:
    """Train ``args.steps`` steps in ``dtype``; the per-step losses, seconds per step, and the precision used."""
    from sftlab.config import TrainConfig
    from sftlab.recipes.train import finish_train, prepare_train

    out = work / dtype
    cfg = TrainConfig(model_name_or_path=args.model, train_file=[str(data_file)], output_dir=str(out),
                      max_length=args.seq, per_device_train_batch_size=args.batch, max_steps=args.steps,
                      learning_rate=args.lr, logging_steps=1, save_strategy="no", resume="never", seed=0,
                      dtype=dtype)
    with Quiet():
        session = prepare_train(cfg)
        started = time.perf_counter()
        finish_train(session)
    seconds = (time.perf_counter() - started) / args.steps
    losses = [m["loss"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in m]
    summary = json.loads((out / "summary.json").read_text())
    return losses, seconds, summary["precision"]


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="sftlab-bf16-"))
    records = json.loads((shared_data() / "alpaca" / "alpaca_5000.json").read_text())[: args.steps * args.batch * 2]
    data_file = work / "alpaca.json"
    data_file.write_text(json.dumps(records))
    print(f"load average before: {load_average()}", flush=True)
    curves = {}
    for dtype in ("float32", "auto"):
        losses, seconds, precision = run(args, work, data_file, dtype)
        curves[precision] = losses
        print(f"{precision:14s} {seconds:6.1f} s/step  loss " + " ".join(f"{x:.4f}" for x in losses), flush=True)
    (a, fp32), (b, other) = curves.items()
    gaps = [abs(y - x) / x for x, y in zip(fp32, other)]
    print(f"largest relative gap {b} vs {a}: {max(gaps):.3%} (mean {sum(gaps) / len(gaps):.3%}) over {len(gaps)} steps")
    print(f"load average after: {load_average()}", flush=True)
    if args.profile:
        profile_step(args)


def profile_step(args: argparse.Namespace) -> None:
    """One bf16 full-FT step on a fixed batch (scored-positions head, fused AdamW), profiled by op."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from sftlab.models.load import load_model
    from sftlab.train.losses import cross_entropy
    from sftlab.train.trainer import scored_positions_only

    model = load_model(args.model, dtype="float32").train()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (8, 96), generator=gen)
    labels = ids.clone()
    labels[:, :40] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    head = model.get_output_embeddings()

    def step() -> None:
        with scored_positions_only(head, labels) as lab, torch.autocast("cpu", torch.bfloat16):
            loss = cross_entropy(model(input_ids=ids).logits, lab)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (optimizer state, kernel selection)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with torch.profiler.record_function("forward+backward+adamw"):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=22, max_name_column_width=38))


if __name__ == "__main__":
    main()
