"""Eval loss of saved models in three views: an fp32 forward, bf16 autocast (nearest cast), and bf16 autocast
on dithered weights (``sftlab.train.weight_rounding``).

Each model is loaded through the real recipe (``prepare_train``) with the real demo's held-out scenes as
its eval file, and ``trainer.evaluate()`` is called once per view. Give it the model dirs that
``bench/bf16_agreement.py --demo`` prints, one per precision it trained in.

Run:  .venv/bin/python bench/bf16_eval_views.py WORK/fp32/model WORK/bf16_nearest/model WORK/bf16_dithered/model
"""

from __future__ import annotations

import argparse
import tempfile

from common import Quiet


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="saved model dirs")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch

    from sftlab.config import TrainConfig
    from sftlab.recipes.demo_real import data_dir
    from sftlab.recipes.train import prepare_train
    from sftlab.train.weight_rounding import DitheredBf16, dithered_weights

    torch.set_num_threads(args.threads)
    print(f"{'model':60s} {'fp32':>8s} {'bf16 nearest':>13s} {'bf16 dithered':>14s}")
    for model in args.models:
        losses = []
        for dtype in ("float32", "auto"):
            cfg = TrainConfig(model_name_or_path=model, train_file=[str(data_dir() / "shakespeare_train.jsonl")],
                              eval_file=str(data_dir() / "shakespeare_eval.jsonl"), dtype=dtype, seed=0,
                              output_dir=tempfile.mkdtemp(prefix="sftlab-eval-"), max_length=256,
                              save_strategy="no", resume="never")
            with Quiet():
                trainer = prepare_train(cfg).trainer
                losses.append(trainer.evaluate()["eval_loss"])
                if dtype == "auto":
                    with DitheredBf16(dithered_weights(trainer.model), seed=0).applied():
                        losses.append(trainer.evaluate()["eval_loss"])
        print(f"{model[-60:]:60s} {losses[0]:8.4f} {losses[1]:13.4f} {losses[2]:14.4f}", flush=True)


if __name__ == "__main__":
    main()
