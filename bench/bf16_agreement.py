"""bf16 autocast against fp32 on a real base: the training loss curve, step by step, through `sftlab train`.

Runs of the real recipe (``prepare_train`` / ``finish_train``) from the same weights, on the same records
in the same order (same seed), differing only in precision: float32; auto (bf16 autocast on a CPU with bf16 units)
with ``bf16_weight_rounding: nearest`` (autocast's cast of the master weights); and auto with
``dithered`` (the default there). Every step's train loss
is logged. Prints the curves, each bf16 curve's largest and mean relative gap to fp32, and each run's
seconds per step. ``--demo`` trains the real demo's own settings on its shipped scenes (``full``: 20
steps of 8 packed rows of 256 tokens, lr 5e-5 with 10% warm-up) instead of Alpaca rows. ``--profile``
then profiles one more bf16 step (torch.profiler, top ops by self CPU time).

Run:  .venv/bin/python bench/bf16_agreement.py [--model smollm2-135m-instruct] [--steps 8] [--batch 4] [--seq 96]
      .venv/bin/python bench/bf16_agreement.py --demo --threads 2
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
    p.add_argument("--demo", action="store_true", help="the real demo's full strategy settings and scenes")
    p.add_argument("--variants", nargs="*", default=["fp32", "bf16 nearest", "bf16 dithered"],
                   choices=["fp32", "bf16 nearest", "bf16 dithered"])
    p.add_argument("--profile", action="store_true")
    return p.parse_args()


VARIANTS = {"fp32": {"dtype": "float32"}, "bf16 nearest": {"dtype": "auto", "bf16_weight_rounding": "nearest"},
            "bf16 dithered": {"dtype": "auto", "bf16_weight_rounding": "dithered"}}


def run(args: argparse.Namespace, work: Path, data_file: Path, variant: str) -> tuple[list[float], float, str]:
    """Train in ``variant``; the per-step losses, seconds per step, and the precision used."""
    from sftlab.config import TrainConfig
    from sftlab.recipes.demo_plan import builtin_plan
    from sftlab.recipes.train import finish_train, prepare_train

    out = work / variant.replace(" ", "_")
    if args.demo:
        # The real demo's train keys, less its data files (this script trains on its own).
        settings = {k: v for k, v in builtin_plan(real=True, quick=False).train.items()
                    if k not in ("train_file", "eval_file")} | {"save_strategy": "no"}
    else:
        settings = {"max_length": args.seq, "per_device_train_batch_size": args.batch, "max_steps": args.steps,
                    "learning_rate": args.lr, "logging_steps": 1, "save_strategy": "no"}
    cfg = TrainConfig(model_name_or_path=args.model, train_file=[str(data_file)], output_dir=str(out),
                      resume="never", seed=0, **settings, **VARIANTS[variant])
    with Quiet():
        session = prepare_train(cfg)
        started = time.perf_counter()
        finish_train(session)
    losses = [m["loss"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in m]
    seconds = (time.perf_counter() - started) / len(losses)
    summary = json.loads((out / "summary.json").read_text())
    return losses, seconds, summary["precision"]


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="sftlab-bf16-"))
    if args.demo:
        from sftlab.recipes.demo_real import data_dir

        data_file = data_dir() / "shakespeare_train.jsonl"
    else:
        records = json.loads((shared_data() / "alpaca" / "alpaca_5000.json").read_text())[: args.steps * args.batch * 2]
        data_file = work / "alpaca.json"
        data_file.write_text(json.dumps(records))
    print(f"load average before: {load_average()}", flush=True)
    curves = {}
    for variant in args.variants:
        losses, seconds, precision = run(args, work, data_file, variant)
        curves[variant] = losses
        print(f"{variant:14s} ({precision}) {seconds:6.1f} s/step  loss " + " ".join(f"{x:.4f}" for x in losses),
              flush=True)
    fp32 = curves.get("fp32")
    for variant, losses in curves.items():
        if fp32 is not None and variant != "fp32":
            gaps = [(y - x) / x for x, y in zip(fp32, losses)]
            print(f"{variant} against fp32: largest gap {max(map(abs, gaps)):.2%}, mean {sum(map(abs, gaps)) / len(gaps):.2%}"
                  f", signed mean {sum(gaps) / len(gaps):+.2%}, within 1% at {sum(abs(g) <= 0.01 for g in gaps)} of "
                  f"{len(gaps)} steps; per step " + " ".join(f"{g:+.2%}" for g in gaps))
    print(f"load average after: {load_average()}", flush=True)
    print(f"saved models: {work}/<variant>/model (bench/bf16_eval_views.py evaluates them)", flush=True)
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
