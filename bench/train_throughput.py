"""Training throughput: sftlab against TRL's SFTTrainer and a plain transformers Trainer.

Same tiny GPT-2 (the ``tiny`` preset, about 1M parameters), same Alpaca records, same sequence length
and effective batch, measured in one process and interleaved in rounds so that machine load hits every
contender alike. Throughput counts the same tokens for everyone: non-padding input tokens per second
(transformers' ``include_num_input_tokens_seen="non_padding"``), over the steps after a warm-up.

Contenders:
  sftlab packed        `sftlab train` with packing (its recommended setting), built by the real recipe
  sftlab padded        the same without packing (rows padded to the longest in the batch)
  Trainer max_length   plain transformers.Trainer, rows padded to max_length (the common recipe)
  TRL defaults         trl.SFTTrainer with SFTConfig defaults (bf16 autocast, gradient checkpointing)
  TRL best CPU         trl.SFTTrainer in fp32 without gradient checkpointing

Run:  .venv/bin/python bench/train_throughput.py [--steps 30] [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import Quiet, StepTimer, shared_data


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=1000)
    p.add_argument("--seq", type=int, default=128, help="max_length")
    p.add_argument("--batch", type=int, default=16, help="per-device batch (no accumulation)")
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps per measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before timing starts")
    p.add_argument("--rounds", type=int, default=2, help="interleaved repetitions; the median is reported")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--only", nargs="*", help="run only these contenders (names as in the table)")
    p.add_argument("--fraction-lengths", nargs="*", type=int, default=[256, 512, 1024],
                   help="also report the real-token fraction at these max_lengths")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="sftlab-bench-"))
    setup = make_setup(work, args)

    contenders: dict[str, Callable[[StepTimer], Any]] = {
        "sftlab packed": lambda timer: sftlab_trainer(setup, args, timer, packing=True),
        "sftlab padded": lambda timer: sftlab_trainer(setup, args, timer, packing=False),
        "Trainer max_length": lambda timer: plain_trainer(setup, args, timer),
        "TRL defaults": lambda timer: trl_trainer(setup, args, timer, best_cpu=False),
        "TRL best CPU": lambda timer: trl_trainer(setup, args, timer, best_cpu=True),
    }
    names = [n for n in contenders if not args.only or n in args.only]
    speeds: dict[str, list[float]] = {n: [] for n in names}
    for rnd in range(args.rounds):
        for name in names:
            timer = StepTimer(args.warmup, args.steps)
            trainer = contenders[name](timer)
            trainer.train()
            seconds, tokens = timer.result
            speeds[name].append(tokens / seconds)
            print(f"round {rnd + 1} {name:20s} {tokens / seconds:9.0f} tok/s ({tokens} tokens in {seconds:.2f} s)",
                  flush=True)
            del trainer

    report(speeds, setup, args)


# --------------------------------------------------------------------------------------------------
# Shared inputs


def make_setup(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Tokenizer + random-init tiny GPT-2 saved once; the Alpaca subset as a file and as prompt/completion."""
    import torch
    from transformers import AutoModelForCausalLM

    from sftlab.config import TrainConfig
    from sftlab.data.dataset import build_train_dataset
    from sftlab.data.readers import read_records
    from sftlab.data.tokenize import render_prompt
    from sftlab.models.tiny import build_config, save_tokenizer, train_tokenizer

    records = json.loads((shared_data() / "alpaca" / "alpaca_5000.json").read_text())[: args.records]
    data_file = work / "alpaca.json"
    data_file.write_text(json.dumps(records))
    tokenizer = train_tokenizer((r["instruction"] + " " + r["input"] + " " + r["output"] for r in records), 2048)
    model_dir = work / "base"
    torch.manual_seed(0)
    config = build_config(len(tokenizer), "gpt2", "tiny", max_position_embeddings=args.seq,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(model_dir))
    save_tokenizer(tokenizer, model_dir)

    parsed = read_records([data_file]).records
    prompt_completion = [
        {"prompt": render_prompt(tokenizer, r.as_messages()[:-1]), "completion": r.completion} for r in parsed
    ]
    # Real (non-pad) share of the token slots when every row is max_length long: packed rows against one
    # example per row padded to max_length. Tokenization and packing only, at several lengths.
    # Also packed with overflow: split, where long examples become several documents instead of being cut.
    fractions = {}
    for length in sorted({args.seq, *args.fraction_lengths}):
        for packing, overflow, label in ((True, "truncate", "packed"), (True, "split", "packed, overflow split"),
                                         (False, "truncate", "padded to max_length")):
            cfg = TrainConfig(model_name_or_path=str(model_dir), train_file=[str(data_file)], max_length=length,
                              packing=packing, overflow=overflow)
            fractions[f"max_length {length}, {label}"] = build_train_dataset(
                parsed, tokenizer, cfg).stats.real_token_fraction
    return {
        "work": work,
        "model_dir": model_dir,
        "data_file": data_file,
        "tokenizer": tokenizer,
        "prompt_completion": prompt_completion,
        "params": sum(p.numel() for p in model.parameters()),
        "fractions": fractions,
    }


def _common(args: argparse.Namespace) -> dict[str, Any]:
    """Settings every contender shares: the step budget, the batch, no saving or evaluation, no reporting."""
    return {
        "per_device_train_batch_size": args.batch,
        "gradient_accumulation_steps": 1,
        "max_steps": args.warmup + args.steps,
        "learning_rate": 1e-3,
        "save_strategy": "no",
        "seed": 0,
    }


# --------------------------------------------------------------------------------------------------
# Contenders


def sftlab_trainer(setup: dict[str, Any], args: argparse.Namespace, timer: Any, packing: bool) -> Any:
    """The trainer `sftlab train` builds (its callbacks, collator, loss and NaN guard included)."""
    from sftlab.config import TrainConfig
    from sftlab.recipes.train import prepare_train

    out = Path(tempfile.mkdtemp(dir=setup["work"]))
    cfg = TrainConfig(model_name_or_path=str(setup["model_dir"]), train_file=[str(setup["data_file"])],
                      output_dir=str(out), max_length=args.seq, packing=packing, logging_steps=10,
                      resume="never", **_common(args))
    with Quiet():
        session = prepare_train(cfg)
    session.trainer.args.include_num_input_tokens_seen = "non_padding"
    session.trainer.add_callback(timer)
    return session.trainer


def plain_trainer(setup: dict[str, Any], args: argparse.Namespace, timer: Any) -> Any:
    """transformers.Trainer on the same tokenized rows, padded to max_length; the model computes the loss."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from sftlab.config import TrainConfig
    from sftlab.data.dataset import build_train_dataset
    from sftlab.data.packing import SFTCollator
    from sftlab.data.readers import read_records

    tokenizer = setup["tokenizer"]
    cfg = TrainConfig(model_name_or_path="unused", train_file=["unused"], max_length=args.seq)
    dataset = build_train_dataset(read_records([setup["data_file"]]).records, tokenizer, cfg)
    training_args = TrainingArguments(
        output_dir=str(setup["work"] / "plain"), use_cpu=True, report_to="none", disable_tqdm=True,
        logging_steps=10, optim="adamw_torch", remove_unused_columns=False, dataloader_pin_memory=False,
        include_num_input_tokens_seen="non_padding", **_common(args),
    )
    trainer = Trainer(
        model=AutoModelForCausalLM.from_pretrained(str(setup["model_dir"])),
        args=training_args,
        train_dataset=dataset,
        data_collator=SFTCollator(tokenizer, pad_to_multiple_of=args.seq),
        processing_class=tokenizer,
        callbacks=[timer],
    )
    return trainer


def trl_trainer(setup: dict[str, Any], args: argparse.Namespace, timer: Any, best_cpu: bool) -> Any:
    """trl.SFTTrainer on the same prompts and completions (completion-only loss, EOS appended by TRL)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    # use_cpu: without it SFTConfig's bf16 default refuses to start on a machine without a GPU.
    extra = {"bf16": False, "gradient_checkpointing": False} if best_cpu else {}
    config = SFTConfig(
        output_dir=str(setup["work"] / "trl"), max_length=args.seq, report_to="none", disable_tqdm=True,
        use_cpu=True, include_num_input_tokens_seen="non_padding", **_common(args), **extra,
    )
    with Quiet():
        trainer = SFTTrainer(
            model=AutoModelForCausalLM.from_pretrained(str(setup["model_dir"])),
            args=config,
            train_dataset=Dataset.from_list(setup["prompt_completion"]),
            processing_class=setup["tokenizer"],
            callbacks=[timer],
        )
    return trainer


# --------------------------------------------------------------------------------------------------
# Report


def report(speeds: dict[str, list[float]], setup: dict[str, Any], args: argparse.Namespace) -> None:
    median = {name: statistics.median(v) for name, v in speeds.items() if v}
    print()
    print(f"GPT-2 {setup['params'] / 1e6:.2f}M parameters, seq {args.seq}, batch {args.batch}, "
          f"{args.threads} threads, {args.steps} timed steps after {args.warmup}, median of {args.rounds} rounds")
    print(f"{'contender':22s} {'tok/s':>9s}  rounds")
    for name, value in median.items():
        rounds = ", ".join(f"{v:.0f}" for v in speeds[name])
        print(f"{name:22s} {value:9.0f}  [{rounds}]")
    ratios = {}
    for ours in ("sftlab packed", "sftlab padded"):
        for peer in ("TRL defaults", "TRL best CPU", "Trainer max_length"):
            if ours in median and peer in median:
                ratios[f"{ours} / {peer}"] = median[ours] / median[peer]
    print()
    for key, value in ratios.items():
        print(f"{key:40s} {value:5.2f}x")
    print()
    for key, value in setup["fractions"].items():
        print(f"real-token fraction, {key:40s} {value:.1%}")
    if args.json:
        args.json.write_text(json.dumps({"tokens_per_s": speeds, "median": median, "ratios": ratios,
                                         "real_token_fraction": setup["fractions"], "params": setup["params"],
                                         "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))


if __name__ == "__main__":
    main()
