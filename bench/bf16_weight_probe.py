"""Where bf16 autocast's loss gap comes from: the forward's rounding of weights that just moved.

One fp32 AdamW step from SmolLM2 on a batch of the real demo's scenes (8 packed rows of 256 tokens,
learning rate 5e-5), then the next batch's loss from the same weights, forwarded four ways:

- fp32;
- bf16 autocast (the weights cast to nearest bf16, as in a bf16 training step);
- fp32 on the weights rounded to nearest bf16 (the rounding alone, without bf16 activations);
- bf16 autocast on the weights dithered (``sftlab.train.weight_rounding``), for three seeds.

Also the share of weights that bf16 holds exactly, before and after the step.

Run:  .venv/bin/python bench/bf16_weight_probe.py [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from common import Quiet


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from sftlab.config import TrainConfig
    from sftlab.recipes.demo_plan import builtin_plan
    from sftlab.recipes.demo_real import data_dir
    from sftlab.recipes.train import prepare_train
    from sftlab.train.weight_rounding import DitheredBf16, dithered_weights

    settings = {k: v for k, v in builtin_plan(real=True, quick=False).train.items()
                if k in ("max_length", "packing", "per_device_train_batch_size")}
    cfg = TrainConfig(model_name_or_path="smollm2-135m-instruct", output_dir=tempfile.mkdtemp(prefix="sftlab-probe-"),
                      train_file=[str(data_dir() / "shakespeare_train.jsonl")], dtype="float32", seed=0,
                      save_strategy="no", resume="never", **settings)
    with Quiet():
        trainer = prepare_train(cfg).trainer
    model = trainer.model
    batches = iter(trainer.get_train_dataloader())
    first, second = next(batches), next(batches)

    def loss(bf16: bool) -> float:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return trainer.compute_loss(model, second).item()

    def exact_share() -> float:
        params = list(model.parameters())
        exact = sum((q.data.to(torch.bfloat16).float() == q.data).sum().item() for q in params)
        return exact / sum(q.numel() for q in params)

    print(f"before the step: next batch fp32 {loss(False):.4f}, bf16 {loss(True):.4f}; "
          f"weights exact in bf16 {exact_share():.1%}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=FULL.train["learning_rate"], weight_decay=0.0, fused=True)
    trainer.compute_loss(model, first).backward()
    optimizer.step()
    fp32 = loss(False)
    print(f"after one fp32 step: weights exact in bf16 {exact_share():.4%}")
    print(f"  fp32 forward                         {fp32:.4f}")
    print(f"  bf16 autocast (nearest)              {loss(True):.4f} ({loss(True) / fp32 - 1:+.2%})")
    masters = {name: q.data.clone() for name, q in model.named_parameters()}
    for q in model.parameters():
        q.data = q.data.to(torch.bfloat16).float()
    print(f"  fp32 forward, weights nearest bf16   {loss(False):.4f} ({loss(False) / fp32 - 1:+.2%})")
    for name, q in model.named_parameters():
        q.data = masters[name]
    for seed in range(3):
        with DitheredBf16(dithered_weights(model), seed).applied():
            dithered = loss(True)
        print(f"  bf16 autocast, dithered (seed {seed})    {dithered:.4f} ({dithered / fp32 - 1:+.2%})")


if __name__ == "__main__":
    main()
