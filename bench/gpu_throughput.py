"""GPU training throughput on a real model: sftlab against TRL's SFTTrainer, bf16, with and without
flash-attention varlen packing.

UNTESTED: written for a GPU machine and not yet run on one (this project's CI machine has no GPU).
It refuses to start without CUDA. Results and the command that made them belong in docs/benchmarks.md.

Same model (default: sftlab's built-in ``smollm2-135m-instruct``; any HF dir or hub id with
``--model``), same Alpaca records, same max_length and batch, all in bf16 autocast over fp32 master
weights, measured in one process and interleaved in rounds. Throughput counts non-padding input tokens
per second (transformers' ``include_num_input_tokens_seen="non_padding"``) over the steps after a
warm-up.

Contenders:
  sftlab packed sdpa     `sftlab train` with packing, SDPA attention (block-diagonal mask from position_ids)
  sftlab packed fa2      the same with attn_implementation: flash_attention_2 (varlen kernels, no mask)
  TRL packed sdpa        trl.SFTTrainer, packing=True (its BFD packing), SDPA
  TRL packed fa2         trl.SFTTrainer, packing=True, flash_attention_2 (padding-free)

The fa2 contenders need the flash-attn package; they are skipped, with a note, when it is missing.

Run:  .venv/bin/python bench/gpu_throughput.py [--model smollm2-135m-instruct] [--steps 50] [--rounds 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import Quiet, StepTimer, shared_data


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="sftlab built-in name, HF dir or hub id")
    p.add_argument("--records", type=int, default=2000)
    p.add_argument("--seq", type=int, default=1024, help="max_length")
    p.add_argument("--batch", type=int, default=8, help="per-device batch (no accumulation)")
    p.add_argument("--steps", type=int, default=50, help="timed optimizer steps per measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before timing starts")
    p.add_argument("--rounds", type=int, default=2, help="interleaved repetitions; the median is reported")
    p.add_argument("--only", nargs="*", help="run only these contenders (names as in the table)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    import torch

    if not torch.cuda.is_available():
        print(f"{Path(sys.argv[0]).name}: needs a CUDA GPU; see bench/train_throughput.py for CPU", file=sys.stderr)
        raise SystemExit(2)
    work = Path(tempfile.mkdtemp(prefix="sftlab-gpu-bench-"))
    setup = make_setup(work, args)
    has_fa2 = importlib.util.find_spec("flash_attn") is not None

    contenders: dict[str, Callable[[StepTimer], Any]] = {
        "sftlab packed sdpa": lambda timer: sftlab_trainer(setup, args, timer, "sdpa"),
        "sftlab packed fa2": lambda timer: sftlab_trainer(setup, args, timer, "flash_attention_2"),
        "TRL packed sdpa": lambda timer: trl_trainer(setup, args, timer, "sdpa"),
        "TRL packed fa2": lambda timer: trl_trainer(setup, args, timer, "flash_attention_2"),
    }
    names = [n for n in contenders if (not args.only or n in args.only) and (has_fa2 or "fa2" not in n)]
    if not has_fa2:
        print("flash-attn is not installed: the fa2 contenders are skipped", flush=True)
    speeds: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, list[float]] = {n: [] for n in names}
    for rnd in range(args.rounds):
        for name in names:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            timer = StepTimer(args.warmup, args.steps)
            trainer = contenders[name](timer)
            trainer.train()
            seconds, tokens = timer.result
            speeds[name].append(tokens / seconds)
            peaks[name].append(torch.cuda.max_memory_allocated() / 2**30)
            print(f"round {rnd + 1} {name:20s} {tokens / seconds:9.0f} tok/s, peak {peaks[name][-1]:.2f} GiB",
                  flush=True)
            del trainer

    report(speeds, peaks, setup, args)


def make_setup(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The model resolved once to a local dir, and the Alpaca subset as a file and as prompt/completion."""
    from sftlab.data.readers import read_records
    from sftlab.data.tokenize import render_prompt
    from sftlab.models.load import load_tokenizer

    records = json.loads((shared_data() / "alpaca" / "alpaca_5000.json").read_text())[: args.records]
    data_file = work / "alpaca.json"
    data_file.write_text(json.dumps(records))
    model_dir = resolve_model(args.model)
    tokenizer = load_tokenizer(model_dir)
    parsed = read_records([data_file]).records
    prompt_completion = [
        {"prompt": render_prompt(tokenizer, r.as_messages()[:-1]), "completion": r.completion} for r in parsed
    ]
    return {"work": work, "model_dir": model_dir, "data_file": data_file, "tokenizer": tokenizer,
            "prompt_completion": prompt_completion}


def resolve_model(name: str) -> str:
    """A built-in sftlab name (or a .gguf file) becomes its converted, cached model dir; a dir or hub id stays."""
    from sftlab.models.builtin import resolve_model_source

    return resolve_model_source(name)


def _common(args: argparse.Namespace) -> dict[str, Any]:
    """Settings every contender shares: steps, batch, bf16 autocast, no saving or evaluation."""
    return {
        "per_device_train_batch_size": args.batch,
        "gradient_accumulation_steps": 1,
        "max_steps": args.warmup + args.steps,
        "learning_rate": 1e-5,
        "save_strategy": "no",
        "seed": 0,
        "bf16": True,
        "gradient_checkpointing": False,
    }


def sftlab_trainer(setup: dict[str, Any], args: argparse.Namespace, timer: Any, attention: str) -> Any:
    """The trainer `sftlab train` builds, packed, with ``attention`` as its attn_implementation."""
    from sftlab.config import TrainConfig
    from sftlab.recipes.train import prepare_train

    out = Path(tempfile.mkdtemp(dir=setup["work"]))
    cfg = TrainConfig(model_name_or_path=str(setup["model_dir"]), train_file=[str(setup["data_file"])],
                      output_dir=str(out), max_length=args.seq, packing=True, logging_steps=10,
                      resume="never", attn_implementation=attention, **_common(args))
    with Quiet():
        session = prepare_train(cfg)
    session.trainer.args.include_num_input_tokens_seen = "non_padding"
    session.trainer.add_callback(timer)
    return session.trainer


def trl_trainer(setup: dict[str, Any], args: argparse.Namespace, timer: Any, attention: str) -> Any:
    """trl.SFTTrainer on the same prompts and completions, packed, fp32 weights under bf16 autocast."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    config = SFTConfig(
        output_dir=str(setup["work"] / "trl"), max_length=args.seq, packing=True, report_to="none",
        disable_tqdm=True, include_num_input_tokens_seen="non_padding", **_common(args),
    )
    model = AutoModelForCausalLM.from_pretrained(setup["model_dir"], dtype="float32", attn_implementation=attention)
    with Quiet():
        trainer = SFTTrainer(
            model=model.cuda(),
            args=config,
            train_dataset=Dataset.from_list(setup["prompt_completion"]),
            processing_class=setup["tokenizer"],
            callbacks=[timer],
        )
    return trainer


def report(speeds: dict[str, list[float]], peaks: dict[str, list[float]], setup: dict[str, Any],
           args: argparse.Namespace) -> None:
    import torch

    median = {name: statistics.median(v) for name, v in speeds.items() if v}
    print()
    print(f"{args.model} on {torch.cuda.get_device_name()}, seq {args.seq}, batch {args.batch}, bf16, "
          f"{args.steps} timed steps after {args.warmup}, median of {args.rounds} rounds")
    print(f"{'contender':22s} {'tok/s':>9s} {'peak GiB':>9s}  rounds")
    for name, value in median.items():
        rounds = ", ".join(f"{v:.0f}" for v in speeds[name])
        print(f"{name:22s} {value:9.0f} {max(peaks[name]):9.2f}  [{rounds}]")
    ratios = {f"sftlab packed {a} / TRL packed {a}": median[f"sftlab packed {a}"] / median[f"TRL packed {a}"]
              for a in ("sdpa", "fa2") if f"sftlab packed {a}" in median and f"TRL packed {a}" in median}
    print()
    for key, value in ratios.items():
        print(f"{key:40s} {value:5.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"tokens_per_s": speeds, "median": median, "peak_gib": peaks,
                                         "ratios": ratios, "args": {k: str(v) for k, v in vars(args).items()}},
                                        indent=2))


if __name__ == "__main__":
    main()
