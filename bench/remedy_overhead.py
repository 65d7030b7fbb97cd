"""Remedy overhead: step time and memory of each remedy against plain full fine-tuning.

Every contender is the trainer `sftlab train` builds (``prepare_train``: the real collator, loss,
regularizers, NEFTune hook and callbacks) on the same random-init GPT-2 (the ``tiny`` preset, about 1M
parameters), the same Alpaca records, sequence length and batch. They run in one process, interleaved
in rounds, so that machine load hits all of them alike. Each measurement is the wall time per
optimizer step over the steps after a warm-up; each contender's ratio is taken against the plain
full fine-tune of the same round, and the median over rounds is reported.

Contenders (remedy settings are typical values; the step cost hardly depends on them):
  full            plain full fine-tuning, cross-entropy (the reference)
  neftune         + NEFTune, alpha 5
  l2sp            + L2-SP, lambda 0.01
  ewc             + EWC, lambda 1 (the Fisher is computed once, outside the timing, and reused)
  kl full         + KL-to-base on responses, a frozen copy of the base as the reference
  gem             loss: gem (beta 0.7)
  dft             loss: dft (DFT, Wu et al. 2025)
  eaft            loss: eaft (EAFT, Diao et al. 2026: top-20 entropy weight, alpha 1)
  tofu            loss: tofu (TOFU, Klypa & Cherednichenko 2026: gamma 3, beta 0.8)
  asft            preset: asft (DFT + KL-to-base on responses, forward, beta 0.1; a frozen base copy)
  replay          + replay, 20% of trained tokens from plain text (more tokens are trained per step)
  lora            LoRA r 8 on every attention and MLP matrix, no adapter dropout (the default; the
                  reference for the next two)
  kl lora         LoRA + KL-to-base: the base is the same model with the adapter disabled
  lora drop0.05   LoRA with adapter dropout 0.05, to show what that common setting costs
  freelb 1, 2     + FreeLB with 1 and 2 ascent steps (l2, eta 0.1, eps 1): each step is one more forward
                  and backward of the micro-batch
  smart 1         + SMART's smoothness term, 1 ascent step (its cost also holds the penalty's forward)

The adversarial contenders are also reported as a ratio per ascent step: (ratio - 1) / steps.

Step ratios under a loaded machine carry a few percent of noise, more than some targets allow. So
the script also times each remedy's own added work in isolation on one real batch (median of many
repetitions, same process): the NEFTune noise, the L2-SP and EWC penalties with their backward, the
KL-to-base penalty (base forward, two log-softmaxes, KL and its gradient to the logits; the network's
backward is shared with the task loss), and GEM, DFT, EAFT and TOFU against cross-entropy; each as a share of the
plain full fine-tuning step.

Memory: the bytes of tensors each trainer holds, split into the model (weights and buffers), the
regularizers' own state (anchors, Fisher, base copy; tensors the model already holds are not counted
again) and the optimizer state, plus the peak memory of the run (CUDA's peak allocation on a GPU;
on a CPU the process's peak RSS since the contender was built, which allocator caching blurs).

Run:  .venv/bin/python bench/remedy_overhead.py [--steps 10] [--warmup 3] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from common import Quiet, StepTimer, shared_data

# Target ratios against plain full fine-tuning.
TARGETS = {"neftune": 1.03, "l2sp": 1.10, "ewc": 1.15, "kl full": 1.7, "kl lora": 1.7, "dft": 1.03}
# ASFT is DFT plus KL-to-base: its target is KL-to-base's own ratio (same run) plus this margin.
ASFT_MARGIN_OVER_KL = 0.03


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=600)
    p.add_argument("--seq", type=int, default=128, help="max_length")
    p.add_argument("--batch", type=int, default=16, help="per-device batch (no accumulation)")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing starts")
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the median is reported")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--no-packing", action="store_true", help="pad rows instead of packing them")
    p.add_argument("--only", nargs="*", help="run only these contenders, in this order (full is always run, first)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args()


def contenders(setup: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Config keys per contender, on top of the shared ones."""
    lora = {"method": "lora", "lora": {"r": 8, "alpha": 16, "target_modules": ["c_attn", "c_proj", "c_fc"]}}
    kl = {"kl_to_base": {"beta": 0.1, "direction": "forward", "on": "response"}}
    return {
        "full": {},
        "neftune": {"neftune_noise_alpha": 5.0},
        "l2sp": {"l2sp": {"lambda": 0.01}},
        "ewc": {"ewc": {"lambda": 1.0, "fisher_corpus": str(setup["text"]), "fisher_samples": 32}},
        "kl full": kl,
        "gem": {"loss": "gem"},
        "dft": {"loss": "dft"},
        "eaft": {"loss": "eaft"},
        "tofu": {"loss": "tofu"},
        "asft": {"preset": "asft"},
        "replay": {"replay": {"corpus": str(setup["text"]), "ratio": 0.2}},
        "lora": lora,
        "kl lora": {**lora, **kl},
        "lora drop0.05": {**lora, "lora": {**lora["lora"], "dropout": 0.05}},
        **{f"freelb {k}": {"adversarial": {"steps": k, "step_size": 0.1, "epsilon": 1.0}} for k in (1, 2)},
        "smart 1": {"adversarial": {"method": "smart", "steps": 1, "step_size": 0.01, "epsilon": 0.1, "init": 0.01}},
    }


def main() -> None:
    args = parse_args()
    from sftlab.offline import set_offline

    set_offline()
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="sftlab-remedy-bench-"))
    try:
        run(args, make_setup(work, args))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, setup: dict[str, Any]) -> None:
    """Every contender in interleaved rounds, then the isolated component timings, then the report."""
    from sftlab.recipes.train import peak_memory_mb, reset_peak_memory

    specs = contenders(setup)
    unknown = sorted(set(args.only or []) - set(specs))
    if unknown:
        raise SystemExit(f"--only: no contender {', '.join(unknown)}; there are {', '.join(specs)}")
    # --only runs its contenders in the order given (after full), so an order effect can be told from a cost.
    names = ["full", *[n for n in args.only if n != "full"]] if args.only else list(specs)
    step_s: dict[str, list[float]] = {n: [] for n in names}
    memory: dict[str, dict[str, float | None]] = {}
    for rnd in range(args.rounds):
        for name in names:
            timer = StepTimer(args.warmup, args.steps)
            trainer = build(setup, args, name, specs[name])
            trainer.add_callback(timer)
            reset_peak_memory()
            trainer.train()
            assert timer.result is not None
            step_s[name].append(timer.result[0] / args.steps)
            memory[name] = {**held_bytes_mb(trainer), "peak_mb": peak_memory_mb()}
            print(f"round {rnd + 1} {name:8s} {1000 * step_s[name][-1]:7.1f} ms/step", flush=True)
            del trainer

    costs = component_costs(setup, args)
    report(step_s, memory, costs, setup, args)


# --------------------------------------------------------------------------------------------------
# Shared inputs


def make_setup(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Tokenizer and random-init tiny GPT-2 saved once; the Alpaca subset; a plain-text corpus."""
    import torch
    from transformers import AutoModelForCausalLM

    from sftlab.models.tiny import build_config, save_tokenizer, train_tokenizer
    from sftlab.train.callbacks import disable_library_bars

    disable_library_bars()
    records = json.loads((shared_data() / "alpaca" / "alpaca_5000.json").read_text())[: args.records]
    data_file = work / "alpaca.json"
    data_file.write_text(json.dumps(records))
    # Plain text for replay and for EWC's Fisher: tinyshakespeare's speeches (one per blank-line block).
    text = work / "shakespeare.txt"
    text.write_text("\n\n".join((shared_data() / "tinyshakespeare" / "input.txt").read_text().split("\n\n")[:2000]))
    tokenizer = train_tokenizer((r["instruction"] + " " + r["input"] + " " + r["output"] for r in records), 2048)
    model_dir = work / "base"
    torch.manual_seed(0)
    config = build_config(len(tokenizer), "gpt2", "tiny", max_position_embeddings=args.seq,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(model_dir))
    save_tokenizer(tokenizer, model_dir)
    return {"work": work, "model_dir": model_dir, "data_file": data_file, "text": text,
            "pad_token_id": tokenizer.pad_token_id,
            "params": sum(p.numel() for p in model.parameters())}


def build(setup: dict[str, Any], args: argparse.Namespace, name: str, extra: dict[str, Any]) -> Any:
    """The trainer `sftlab train` builds for one contender. Each contender keeps its run dir across
    rounds (``resume: never`` clears its checkpoints), so EWC's Fisher is computed once and reused."""
    from sftlab.config import TrainConfig
    from sftlab.recipes.train import prepare_train

    cfg = TrainConfig(
        model_name_or_path=str(setup["model_dir"]), train_file=[str(setup["data_file"])],
        output_dir=str(setup["work"] / "runs" / name.replace(" ", "_")), max_length=args.seq,
        packing=not args.no_packing, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
        max_steps=args.warmup + args.steps, learning_rate=1e-3, save_strategy="no", logging_steps=10,
        seed=0, resume="never", **extra,
    )
    with Quiet():
        return prepare_train(cfg).trainer


def _tensors(obj: Any, depth: int = 0) -> Iterable[Any]:
    """Tensors reachable from a regularizer's attributes (tensors, lists of them, modules, nested objects)."""
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, torch.nn.Module):
        yield from obj.parameters()
        yield from obj.buffers()
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item, depth)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item, depth)
    elif hasattr(obj, "__dict__") and depth < 2:
        for item in vars(obj).values():
            yield from _tensors(item, depth + 1)


def held_bytes_mb(trainer: Any) -> dict[str, float]:
    """MB of distinct tensor storage held by the model, by the regularizers beyond it, by the optimizer."""
    seen: set[int] = set()

    def total(tensors: Iterable[Any]) -> float:
        count = 0
        for t in tensors:
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                count += storage.nbytes()
        return count / 2**20

    model = total(list(trainer.model.parameters()) + list(trainer.model.buffers()))
    regs = total(t for reg in trainer.regularizers for t in _tensors(reg))
    optim = total(t for state in trainer.optimizer.state.values() for t in _tensors(state))
    return {"model_mb": model, "regularizers_mb": regs, "optimizer_mb": optim}


def _median_ms(fn: Any, reps: int) -> float:
    """Median wall time of ``fn()`` in ms over ``reps`` calls, after two untimed ones."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def component_costs(setup: dict[str, Any], args: argparse.Namespace, reps: int = 30) -> dict[str, float]:
    """ms per step of each remedy's own added work, timed alone on one real training batch."""
    import torch

    from sftlab.train.losses import cross_entropy, dft_loss, eaft_loss, gem_loss, tofu_loss
    from sftlab.train.neftune import attach_neftune
    from sftlab.train.regularizers import NOT_MODEL_INPUTS, SCORED_POSITIONS_KEY
    from sftlab.train.trainer import scored_positions_only

    specs = contenders(setup)
    trainers = {name: build(setup, args, name, specs[name]) for name in ("full", "l2sp", "ewc", "kl full")}
    full = trainers["full"]
    batch = {k: v.to(full.args.device) for k, v in next(iter(full.get_train_dataloader())).items()}
    model_inputs = {k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}
    labels = batch["labels"]
    scored = torch.zeros_like(labels, dtype=torch.bool)
    scored[:, :-1] = labels[:, 1:] != -100
    costs: dict[str, float] = {}

    model = full.model.train()
    embedding = model.get_input_embeddings()
    with torch.no_grad():
        embeds = embedding(batch["input_ids"])
    # The hook as the trainer runs it: the batch's masks recorded, then the noise (padding found, scaled, added).
    hook = attach_neftune(model, 5.0, pad_token_id=setup["pad_token_id"])
    hook.inputs.record(model, (), model_inputs)
    costs["neftune"] = _median_ms(lambda: hook._add_noise(embedding, (), embeds), reps)
    hook.remove()

    for name in ("l2sp", "ewc"):
        reg = trainers[name].regularizers[0]
        params = reg.anchor.params
        with torch.no_grad():  # off the anchor, as after a few steps (the cost does not depend on it)
            torch._foreach_add_(params, 1e-3)
        costs[name] = _median_ms(lambda: torch.autograd.grad(reg.penalty(None, batch, None), params), reps)

    kl_trainer = trainers["kl full"]
    kl_model = kl_trainer.model.train()
    with torch.no_grad(), scored_positions_only(kl_model.get_output_embeddings(), labels) as gathered_labels:
        gathered = kl_model(**model_inputs).logits
    logits = gathered.detach().requires_grad_(True)

    class Out:
        pass

    out = Out()
    out.logits = logits  # type: ignore[attr-defined]
    kl = kl_trainer.regularizers[0]
    reg_inputs = {**batch, SCORED_POSITIONS_KEY: scored}
    costs["kl full"] = _median_ms(lambda: torch.autograd.grad(kl.penalty(kl_model, reg_inputs, out), logits), reps)
    ce = _median_ms(lambda: torch.autograd.grad(cross_entropy(logits, gathered_labels), logits), reps)
    gem = _median_ms(lambda: torch.autograd.grad(gem_loss(logits, gathered_labels), logits), reps)
    costs["gem"] = gem - ce
    dft = _median_ms(lambda: torch.autograd.grad(dft_loss(logits, gathered_labels), logits), reps)
    costs["dft"] = dft - ce
    for name, loss in (("eaft", eaft_loss), ("tofu", tofu_loss)):
        costs[name] = _median_ms(lambda loss=loss: torch.autograd.grad(loss(logits, gathered_labels), logits), reps) - ce
    return costs


# --------------------------------------------------------------------------------------------------
# Report


def report(step_s: dict[str, list[float]], memory: dict[str, dict[str, float | None]], costs: dict[str, float],
           setup: dict[str, Any], args: argparse.Namespace) -> None:
    import torch

    # Ratio within each round (same load), then the median over rounds.
    ratios = {n: statistics.median(s / f for s, f in zip(v, step_s["full"])) for n, v in step_s.items()}
    lora_ratio = (statistics.median(s / f for s, f in zip(step_s["kl lora"], step_s["lora"]))
                  if "kl lora" in step_s and "lora" in step_s else None)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {args.threads} torch thread(s)"
    print()
    print(f"GPT-2 {setup['params'] / 1e6:.2f}M parameters, seq {args.seq}, batch {args.batch}, "
          f"{'padded' if args.no_packing else 'packed'}, {device}; {args.steps} timed steps after {args.warmup}, "
          f"median of {args.rounds} rounds")
    print("| contender | ms/step (median) | x full FT | target | model MB | regularizers MB | optimizer MB | "
          "peak MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    targets = dict(TARGETS)
    if "kl full" in ratios:
        targets["asft"] = ratios["kl full"] + ASFT_MARGIN_OVER_KL
    for name, values in step_s.items():
        mem = memory[name]
        target = f"<= {targets[name]:.2f}x" if name in targets else ""
        peak = f"{mem['peak_mb']:.0f}" if mem["peak_mb"] is not None else "n/a"
        print(f"| {name} | {1000 * statistics.median(values):.1f} | {ratios[name]:.3f} | {target} | "
              f"{mem['model_mb']:.2f} | {mem['regularizers_mb']:.2f} | {mem['optimizer_mb']:.2f} | {peak} |")
    if lora_ratio is not None:
        print(f"\nkl lora / lora (same round): {lora_ratio:.3f}x")
    adversarial = {n: int(n.split()[1]) for n in step_s if n.startswith(("freelb ", "smart "))}
    if adversarial:
        print("\n| adversarial | ascent steps | x full FT | (ratio - 1) per ascent step |")
        print("|---|---:|---:|---:|")
        for name, k in adversarial.items():
            print(f"| {name} | {k} | {ratios[name]:.3f} | {(ratios[name] - 1) / k:.3f} |")
    full_ms = 1000 * statistics.median(step_s["full"])
    print("\n| remedy's own work, alone | ms per step | share of a full FT step |")
    print("|---|---:|---:|")
    for name, ms in costs.items():
        print(f"| {name} | {ms:.2f} | {100 * ms / full_ms:+.1f}% |")
    if args.json:
        args.json.write_text(json.dumps({"step_seconds": step_s, "ratio_vs_full": ratios, "kl_lora_vs_lora": lora_ratio,
                                         "component_ms": costs, "memory": memory, "params": setup["params"], "targets": targets,
                                         "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))


if __name__ == "__main__":
    main()
