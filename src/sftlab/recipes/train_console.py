"""What ``sftlab train`` prints: the setup table before the first step and the result line at the end."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from transformers import TrainingArguments

from sftlab.config import TrainConfig
from sftlab.train.adapters import count_parameters
from sftlab.train.callbacks import summarize_logs
from sftlab.train.remedies.registry import describe_remedies

if TYPE_CHECKING:
    from pathlib import Path

    from sftlab.recipes.train import TrainSession
    from sftlab.train.trainer import SFTLabTrainer


def precision_name(args: TrainingArguments) -> str:
    """The steps' precision, in words (summary.json's ``precision``)."""
    return "bf16 autocast" if args.bf16 else "fp16 autocast" if args.fp16 else "fp32"


def print_setup(console: Console, session: TrainSession) -> None:
    """The setup table: model, method, precision, records, examples, remedies, engine, resume point."""
    cfg, data, run_dir = session.cfg, session.data, session.run_dir
    trainable, total = count_parameters(session.trainer.model)
    table = Table(title=f"sftlab train -> {run_dir}", show_header=False, title_justify="left")
    table.add_row("model", f"{cfg.model_name_or_path} ({total / 1e6:.2f}M parameters)")
    table.add_row("method", f"{cfg.method}: {trainable:,} trainable ({100 * trainable / max(total, 1):.2f}%)")
    attention = getattr(session.trainer.model.config, "_attn_implementation", None)
    dither = session.trainer.weight_dither
    weights = f"weights fp32, {len(dither.params)} seen dithered in bf16" if dither else "weights fp32"
    table.add_row("precision", f"{precision_name(session.trainer.args)} (dtype: {cfg.dtype}); {weights}; "
                  f"attention {attention}" + ("; blocks compiled (torch_compile)" if cfg.torch_compile else ""))
    rejected = len(data.read.rejected) + (len(data.eval_read.rejected) if data.eval_read else 0)
    reasons = data.read.counts + (data.eval_read.counts if data.eval_read else type(data.read.counts)())
    detail = ", ".join(f"{reason}: {n}" for reason, n in reasons.most_common())
    table.add_row(
        "records",
        f"{data.n_train_records:,} train, {data.n_eval_records:,} eval; {rejected:,} quarantined"
        + (f" ({detail}) -> {run_dir / 'data'}" if rejected else ""),
    )
    st = data.train.stats
    table.add_row(
        "examples",
        f"{st.examples:,} in {st.rows:,} rows of <= {cfg.max_length} tokens ({'packed' if cfg.packing else 'padded'}); "
        f"{st.trained_tokens:,} trained tokens, real-token fraction {st.real_token_fraction:.1%}, "
        + (f"{st.split:,} split into pieces" if cfg.overflow == "split" else f"{st.truncated:,} truncated")
        + (f", {st.no_target:,} dropped (no trained token left)" if st.no_target else "")
        + (f", replay {st.replay_fraction:.1%} of trained tokens" if st.replay_examples else ""),
    )
    remedies = describe_remedies(cfg)
    if remedies:
        table.add_row("remedies", "; ".join(remedies))
    engine = describe_engine(cfg, session.trainer.args.world_size)
    if engine:
        table.add_row("engine", engine)
    if session.checkpoint:
        table.add_row("resume", session.checkpoint)
    console.print(table)


def describe_engine(cfg: TrainConfig, world_size: int) -> str | None:
    """How the run is spread over processes (None for a single process without an engine)."""
    if cfg.fsdp is not None:
        return f"FSDP2 over {world_size} ranks (checkpoints: {cfg.fsdp.state_dict_type.lower()})"
    if cfg.deepspeed is not None:
        return f"DeepSpeed ZeRO-{cfg.deepspeed.stage} over {world_size} ranks"
    return f"DDP over {world_size} ranks" if world_size > 1 else None


def print_result(console: Console, trainer: SFTLabTrainer, out: Path, loss_name: str) -> None:
    """One line of what the run reached (steps, losses), and where the result was saved."""
    first, last = summarize_logs(trainer.state.log_history, "eval_loss")
    loss = next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None)
    parts = [f"{trainer.state.global_step} steps"]
    if loss is not None:
        parts.append(f"last train loss {loss:.4f}")
    if first is not None:
        parts.append(f"eval loss (cross-entropy) {first:.4f} -> {last:.4f}")
    obj_first, obj_last = summarize_logs(trainer.state.log_history, "eval_objective")
    if obj_first is not None and loss_name != "cross_entropy":
        parts.append(f"eval objective ({loss_name}) {obj_first:.4f} -> {obj_last:.4f}")
    console.print("; ".join(parts))
    console.print(f"saved: {out}")
