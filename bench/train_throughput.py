"""Training throughput: sftlab against TRL's SFTTrainer and a plain transformers Trainer.

Same model, same Alpaca records, same sequence length and effective batch, each measurement in a fresh
process (so that nothing one contender leaves in the process, compiled kernels or malloc's heap, reaches
another), and
interleaved in rounds so that machine load hits every contender alike. Throughput counts the same tokens
for everyone: non-padding input tokens per second (transformers' ``include_num_input_tokens_seen="non_padding"``),
over the steps after a warm-up. Each measurement also records the process's peak RSS while training.

The default model is a random-init tiny GPT-2 (the ``tiny`` preset, about 1M parameters), with contenders:
  sftlab packed        `sftlab train` with packing (its recommended setting), built by the real recipe
  sftlab padded        the same without packing (rows padded to the longest in the batch)
  Trainer max_length   plain transformers.Trainer, rows padded to max_length (the common recipe)
  TRL defaults         trl.SFTTrainer with SFTConfig defaults (bf16 autocast, gradient checkpointing)
  TRL best CPU         trl.SFTTrainer in fp32 without gradient checkpointing

``--model`` names a real base instead (``smollm2-135m-instruct``, a model dir, a .gguf file), trained in
full from its own weights with its own chat template, in fp32 and under bf16 autocast:
  sftlab fp32 / bf16   `sftlab train` (padded rows, fused AdamW, scored-positions head), dtype float32 / auto
  sftlab bf16 compiled the same with `torch_compile: true` (each block compiled; the warm-up steps take
                       the compilation, so give it --warmup 2 or more: padded rows recompile once)
  sftlab bf16 compiled packed   the same with packing (sftlab's recommended setting; no padding computed)
  TRL defaults         SFTConfig defaults (bf16 autocast, gradient checkpointing, fused AdamW)
  TRL best CPU fp32    SFTConfig without gradient checkpointing, bf16 off
  TRL best CPU bf16    SFTConfig without gradient checkpointing, bf16 on
  TRL best CPU bf16 eager   the same with eager attention, the kernel sftlab picks for short bf16 rows
Beside tokens/s it reports the fraction of the machine's bf16 matmul rate each reaches: model FLOPs
(6 x parameters per token) per second over the rate of a 2048^2 bf16 matmul timed just before that
measurement, so both see the same load.

Run:  .venv/bin/python bench/train_throughput.py [--steps 30] [--rounds 2] [--threads 2]
      .venv/bin/python bench/train_throughput.py --model smollm2-135m-instruct --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import Quiet, StepTimer, load_average, matmul_gflops, shared_data

PEER = "@peer"  # the suffix of a contender run on the --peer-src tree


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a real base (built-in name, model dir, .gguf) instead of the tiny GPT-2")
    p.add_argument("--records", type=int, default=1000)
    p.add_argument("--seq", type=int, help="max_length (default 128; 96 with --model)")
    p.add_argument("--batch", type=int, help="per-device batch, no accumulation (default 16; 8 with --model)")
    p.add_argument("--steps", type=int, help="timed optimizer steps per measurement (default 30; 3 with --model)")
    p.add_argument("--warmup", type=int, help="untimed steps before timing starts (default 5; 1 with --model)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved repetitions; the median is reported")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--only", nargs="*", help="run only these contenders (names as in the table)")
    p.add_argument("--fraction-lengths", nargs="*", type=int,
                   help="also report the real-token fraction at these max_lengths (default 256 512 1024; none "
                        "with --model)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--peer-src", type=Path,
                   help="also run each sftlab contender on the sftlab checkout at this path (e.g. a git worktree of "
                        "the previous commit), interleaved with this tree's: a change's speed-up, measured")
    p.add_argument("--child", help=argparse.SUPPRESS)  # one measurement, in a process of its own
    args = p.parse_args()
    real = args.model is not None
    defaults = {"seq": 96 if real else 128, "batch": 8 if real else 16, "steps": 3 if real else 30,
                "warmup": 1 if real else 5, "fraction_lengths": [] if real else [256, 512, 1024]}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        measure_here(args)
        return
    import torch

    torch.set_num_threads(args.threads)  # for the fp32 matmul rate the report samples
    names = [n for n in contender_names(args.model is not None) if not args.only or n in args.only]
    if args.peer_src:  # each sftlab contender again, running the sftlab source tree at --peer-src
        names += [f"{n} {PEER}" for n in names if n.startswith("sftlab")]
    setup = make_setup(Path(tempfile.mkdtemp(prefix="sftlab-bench-")), args)
    speeds: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, list[float]] = {n: [] for n in names}
    matmul: dict[str, list[float]] = {n: [] for n in names}  # bf16 GFLOP/s just before each measurement
    passed = child_arguments(args)
    print(f"load average before: {load_average()}", flush=True)
    for rnd in range(args.rounds):
        for name in names:
            env = dict(os.environ)
            if name.endswith(PEER):
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.peer_src / "src"), env.get("PYTHONPATH")]))
            done = subprocess.run([sys.executable, __file__, *passed, "--child", name.removesuffix(f" {PEER}")],
                                  capture_output=True, text=True, env=env)
            if done.returncode != 0:
                sys.exit(f"{name}: the measurement failed:\n{done.stderr[-3000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            speeds[name].append(row["tokens"] / row["seconds"])
            peaks[name].append(row["peak_mb"])
            if row["matmul"] is not None:
                matmul[name].append(row["matmul"])
            print(f"round {rnd + 1} {name:20s} {speeds[name][-1]:9.1f} tok/s ({row['tokens']} tokens in "
                  f"{row['seconds']:.2f} s), peak RSS {row['peak_mb']:.0f} MB"
                  + (f", bf16 matmul {row['matmul']:.0f} GFLOP/s" if row["matmul"] is not None else "")
                  + f"; warm-up steps {', '.join(f'{s:.1f}' for s in row['warmup_seconds'])} s", flush=True)
    print(f"load average after: {load_average()}", flush=True)

    report(speeds, peaks, matmul, setup, args)


def contender_names(real: bool) -> list[str]:
    """The contenders, in the order each round runs them (see the module docstring)."""
    return list(REAL_CONTENDERS if real else TINY_CONTENDERS)


def child_arguments(args: argparse.Namespace) -> list[str]:
    """The command-line arguments that make a child measure under the same settings as this run."""
    passed = [f"--records={args.records}", f"--seq={args.seq}", f"--batch={args.batch}", f"--steps={args.steps}",
              f"--warmup={args.warmup}", f"--threads={args.threads}"]
    return passed + ([f"--model={args.model}"] if args.model else [])


def measure_here(args: argparse.Namespace) -> None:
    """Child mode: build contender ``args.child`` in this fresh process, train it, print one JSON line.

    A process per measurement: state one contender leaves in the process (compiled kernels, malloc's free
    lists and heap) must not reach the next.
    """
    import torch

    from sftlab.recipes.train import peak_memory_mb, reset_peak_memory

    torch.set_num_threads(args.threads)
    args.fraction_lengths = []  # the parent reports the real-token fractions
    setup = make_setup(Path(tempfile.mkdtemp(prefix="sftlab-bench-")), args)
    timer = StepTimer(args.warmup, args.steps)
    trainer = {**TINY_CONTENDERS, **REAL_CONTENDERS}[args.child](setup, args, timer)
    rate = matmul_gflops("bfloat16") if args.model else None
    reset_peak_memory()
    trainer.train()
    seconds, tokens = timer.result
    print(json.dumps({"seconds": seconds, "tokens": tokens, "peak_mb": peak_memory_mb() or float("nan"),
                      "matmul": rate, "warmup_seconds": timer.warmup_seconds}))


# --------------------------------------------------------------------------------------------------
# Shared inputs


def make_setup(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The base (``--model``, or a tokenizer + random-init tiny GPT-2 saved once); the Alpaca subset as a
    file and as prompt/completion rendered with the base's own template."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from sftlab.config import TrainConfig
    from sftlab.data.dataset import build_train_dataset
    from sftlab.data.readers import read_records
    from sftlab.data.tokenize import render_prompt
    from sftlab.models.builtin import resolve_model_source
    from sftlab.models.load import load_tokenizer
    from sftlab.models.tiny import build_config, save_tokenizer, train_tokenizer

    records = json.loads((shared_data() / "alpaca" / "alpaca_5000.json").read_text())[: args.records]
    data_file = work / "alpaca.json"
    data_file.write_text(json.dumps(records))
    if args.model:
        model_dir = Path(resolve_model_source(args.model))
        tokenizer = load_tokenizer(str(model_dir))
        with torch.device("meta"):  # only to count the parameters
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(model_dir)))
    else:
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
    for length in sorted({args.seq, *args.fraction_lengths} if args.fraction_lengths else ()):
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
        "params": sum(p.numel() for p in model.parameters()),  # a tied embedding counts once
        "model_name": args.model or "tiny GPT-2",
        "fractions": fractions,
    }


def _common(args: argparse.Namespace) -> dict[str, Any]:
    """Settings every contender shares: the step budget, the batch, no saving or evaluation, no reporting."""
    return {
        "per_device_train_batch_size": args.batch,
        "gradient_accumulation_steps": 1,
        "max_steps": args.warmup + args.steps,
        "learning_rate": 1e-3 if args.model is None else 1e-5,  # a pretrained base takes a small step
        "save_strategy": "no",
        "seed": 0,
    }


# --------------------------------------------------------------------------------------------------
# Contenders


def sftlab_trainer(setup: dict[str, Any], args: argparse.Namespace, timer: Any, packing: bool,
                   dtype: str = "auto", torch_compile: bool = False, **settings: Any) -> Any:
    """The trainer `sftlab train` builds (its callbacks, collator, loss and NaN guard included); ``settings``
    are further TrainConfig keys."""
    from sftlab.config import TrainConfig
    from sftlab.recipes.train import prepare_train

    out = Path(tempfile.mkdtemp(dir=setup["work"]))
    cfg = TrainConfig(model_name_or_path=str(setup["model_dir"]), train_file=[str(setup["data_file"])],
                      output_dir=str(out), max_length=args.seq, packing=packing, logging_steps=10,
                      resume="never", dtype=dtype, torch_compile=torch_compile, **_common(args), **settings)
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


def trl_trainer(setup: dict[str, Any], args: argparse.Namespace, timer: Any, best_cpu: bool,
                bf16: bool = False, attention: str | None = None) -> Any:
    """trl.SFTTrainer on the same prompts and completions (completion-only loss, EOS appended by TRL).
    ``best_cpu`` turns gradient checkpointing off and sets bf16 autocast to ``bf16``; ``attention`` picks the
    model's attention kernel (default: transformers', SDPA)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    # use_cpu: without it SFTConfig's bf16 default refuses to start on a machine without a GPU.
    extra = {"bf16": bf16, "gradient_checkpointing": False} if best_cpu else {}
    config = SFTConfig(
        output_dir=str(setup["work"] / "trl"), max_length=args.seq, report_to="none", disable_tqdm=True,
        use_cpu=True, include_num_input_tokens_seen="non_padding", **_common(args), **extra,
    )
    with Quiet():
        trainer = SFTTrainer(
            model=AutoModelForCausalLM.from_pretrained(
                str(setup["model_dir"]), **({"attn_implementation": attention} if attention else {})),
            args=config,
            train_dataset=Dataset.from_list(setup["prompt_completion"]),
            processing_class=setup["tokenizer"],
            callbacks=[timer],
        )
    return trainer


# A contender's trainer, built from the shared inputs, the arguments and the step timer.
Builder = Callable[[dict[str, Any], argparse.Namespace, Any], Any]
REAL_CONTENDERS: dict[str, Builder] = {
    "sftlab fp32": lambda setup, args, timer: sftlab_trainer(setup, args, timer, packing=False, dtype="float32"),
    "sftlab bf16": lambda setup, args, timer: sftlab_trainer(setup, args, timer, packing=False, dtype="auto"),
    "sftlab bf16 compiled": lambda setup, args, timer: sftlab_trainer(setup, args, timer, packing=False,
                                                                      dtype="auto", torch_compile=True),
    "sftlab bf16 compiled packed": lambda setup, args, timer: sftlab_trainer(setup, args, timer, packing=True,
                                                                             dtype="auto", torch_compile=True),
    "TRL defaults": lambda setup, args, timer: trl_trainer(setup, args, timer, best_cpu=False),
    "TRL best CPU fp32": lambda setup, args, timer: trl_trainer(setup, args, timer, best_cpu=True, bf16=False),
    "TRL best CPU bf16": lambda setup, args, timer: trl_trainer(setup, args, timer, best_cpu=True, bf16=True),
    # sftlab's own choice of attention kernel for short bf16 rows on a CPU, handed to TRL.
    "TRL best CPU bf16 eager": lambda setup, args, timer: trl_trainer(setup, args, timer, best_cpu=True, bf16=True,
                                                                      attention="eager"),
}
TINY_CONTENDERS: dict[str, Builder] = {
    "sftlab packed": lambda setup, args, timer: sftlab_trainer(setup, args, timer, packing=True),
    "sftlab padded": lambda setup, args, timer: sftlab_trainer(setup, args, timer, packing=False),
    "Trainer max_length": plain_trainer,
    "TRL defaults": lambda setup, args, timer: trl_trainer(setup, args, timer, best_cpu=False),
    "TRL best CPU": lambda setup, args, timer: trl_trainer(setup, args, timer, best_cpu=True),
}


# --------------------------------------------------------------------------------------------------
# Report


def report(speeds: dict[str, list[float]], peaks: dict[str, list[float]], matmul: dict[str, list[float]],
           setup: dict[str, Any], args: argparse.Namespace) -> None:
    """Median tokens/s, peak RSS and (real model) fraction of the bf16 matmul rate per contender; ratios."""
    median = {name: statistics.median(v) for name, v in speeds.items() if v}
    flops_per_token = 6 * setup["params"]  # forward + backward, the usual 6N estimate (attention left out)
    fraction = {name: statistics.median(s * flops_per_token / (m * 1e9) for s, m in zip(speeds[name], matmul[name]))
                for name in median if matmul[name]}
    print()
    print(f"{setup['model_name']}, {setup['params'] / 1e6:.2f}M parameters, seq {args.seq}, batch {args.batch}, "
          f"{args.threads} threads, {args.steps} timed steps after {args.warmup}, median of {args.rounds} rounds; "
          f"load average {load_average()}")
    print(f"{'contender':22s} {'tok/s':>9s} {'peak MB':>8s} {'of bf16 matmul':>15s}  rounds")
    for name, value in median.items():
        rounds = ", ".join(f"{v:.1f}" for v in speeds[name])
        share = f"{fraction[name]:.1%}" if name in fraction else "-"
        print(f"{name:22s} {value:9.1f} {statistics.median(peaks[name]):8.0f} {share:>15s}  [{rounds}]")
    if any(matmul.values()):
        rates = [m for v in matmul.values() for m in v]
        print(f"2048^2 bf16 matmul: median {statistics.median(rates):.0f} GFLOP/s (min {min(rates):.0f}, "
              f"max {max(rates):.0f}); fp32 now {matmul_gflops('float32'):.0f}")
    pairs = [("sftlab bf16 compiled", "sftlab bf16"), ("sftlab bf16 compiled packed", "sftlab bf16 compiled"),
             ("sftlab bf16 compiled", "TRL best CPU bf16"),
             ("sftlab bf16", "TRL defaults"), ("sftlab bf16", "TRL best CPU bf16"),
             ("sftlab bf16", "TRL best CPU bf16 eager"),
             ("sftlab fp32", "TRL best CPU fp32"), ("sftlab bf16", "sftlab fp32"),
             ("TRL best CPU bf16", "TRL best CPU fp32")]
    pairs += [(ours, peer) for ours in ("sftlab packed", "sftlab padded")
              for peer in ("TRL defaults", "TRL best CPU", "Trainer max_length")]
    pairs += [(name, f"{name} {PEER}") for name in median if f"{name} {PEER}" in median]
    # Ratios per round (both measured in the same round, so under similar load), then their median.
    ratios = {f"{a} / {b}": statistics.median(x / y for x, y in zip(speeds[a], speeds[b]))
              for a, b in pairs if a in median and b in median}
    print()
    for key, value in ratios.items():
        print(f"{key:40s} {value:5.2f}x")
    print()
    for key, value in setup["fractions"].items():
        print(f"real-token fraction, {key:40s} {value:.1%}")
    if args.json:
        args.json.write_text(json.dumps({"tokens_per_s": speeds, "median": median, "ratios": ratios,
                                         "peak_rss_mb": peaks, "bf16_matmul_gflops": matmul,
                                         "fraction_of_bf16_matmul": fraction,
                                         "real_token_fraction": setup["fractions"], "params": setup["params"],
                                         "load_average_end": load_average(),
                                         "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))


if __name__ == "__main__":
    main()
