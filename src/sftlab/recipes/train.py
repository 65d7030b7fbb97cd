"""``sftlab train``: supervised fine-tuning of any HF causal LM, on transformers.Trainer.

Run dir (``output_dir``)::

    config.yaml          the resolved config of the latest invocation
    data/                quarantine.jsonl (rejected records: file, line, field, reason) and stats.json
    checkpoints/         checkpoint-N dirs, each written atomically; ``resume: auto`` picks the newest
                         (deleted once the run has finished, with ``keep_checkpoints: false``)
    metrics.jsonl        one JSON object per log event (train loss and its components; eval_loss, the token
                         cross-entropy on the eval set under every loss, and eval_objective, the loss trained)
    ewc_fisher.safetensors   EWC's diagonal Fisher (with ``ewc``), computed once and reused on resume
    summary.json         what the run cost and reached (see :func:`write_summary`)
    model/ or adapter/   the result: a full model dir, or a PEFT adapter dir (``sftlab merge`` folds it in)

Remedies are config keys, each the plug-in of one file in ``sftlab.train.remedies``; the registry calls them
here stage by stage: ``data`` (replay) while the rows are built, ``before_trainer`` (the loss), ``after_trainer``
(penalties and hooks: once the Trainer has put the model on its device, before a checkpoint loads in ``train``),
``before_compile`` (dithered weights), then ``torch_compile`` last: the compiled blocks hold those hooks, and the
KL base copy stays eager. A ``preset`` (ASFT) is expanded into remedy keys when the config is read.

Everything a user can get wrong (config, paths, data in strict mode, a dir that is not a model) is a
UserError; a NaN/inf loss stops the run with one too (see ``sftlab.train.trainer``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ValidationError
from rich.console import Console
from transformers import EarlyStoppingCallback, PretrainedConfig, PreTrainedTokenizerBase, TrainingArguments, set_seed

from sftlab.config import TrainConfig, dump_config
from sftlab.data.dataset import SFTDataset, build_eval_dataset, build_train_dataset, split_records
from sftlab.data.packing import SFTCollator
from sftlab.data.readers import ReadResult, read_records
from sftlab.errors import UserError
from sftlab.models.load import (
    is_adapter_dir,
    load_config,
    load_model,
    load_tokenizer,
    resolve_dtype,
    training_attention,
)
from sftlab.models.reference import resolve_model
from sftlab.recipes.train_console import precision_name, print_result, print_setup
from sftlab.train.adapters import apply_method, count_parameters, is_peft_model
from sftlab.train.callbacks import (
    DatasetEpoch,
    attach_callbacks,
    disable_library_bars,
    quiet_packed_padding_warning,
    summarize_logs,
)
from sftlab.train.compile import compile_blocks
from sftlab.train.distributed import engine_arguments
from sftlab.train.losses import LossFn
from sftlab.train.regularizers import Regularizer
from sftlab.train.remedies.base import RemedyContext
from sftlab.train.remedies.registry import attach_remedies, build_loss, dataset_arguments
from sftlab.train.trainer import (
    SFTLabTrainer,
    check_resume_config,
    config_changes,
    make_training_arguments,
    optimizer_choice,
    resolve_resume,
    save_final,
)
from sftlab.train.weight_rounding import resolve_rounding

# Keys that do not change a finished run's result: a rerun that changes only these has nothing to do.
FINISHED_SAFE = {"output_dir", "resume", "logging_steps", "save_steps", "save_total_limit", "strict_data",
                 "torch_compile", "keep_checkpoints"}
# Keys a resumed run may change: they alter logging, saving, evaluation or how long it runs, not what it learns.
RESUME_SAFE = FINISHED_SAFE | {
    "max_steps", "num_train_epochs", "eval_steps", "eval_strategy", "per_device_eval_batch_size",
    "early_stopping_patience",
}


@dataclass
class TrainData:
    """What the trainer is fed, and what was read to make it."""

    train: SFTDataset
    eval: SFTDataset | None
    read: ReadResult
    eval_read: ReadResult | None
    n_train_records: int
    n_eval_records: int


@dataclass
class TrainSession:
    """A run set up and ready to train: :func:`prepare_train` makes it, :func:`finish_train` runs it."""

    cfg: TrainConfig
    run_dir: Path
    trainer: SFTLabTrainer
    data: TrainData
    checkpoint: str | None

    @property
    def main(self) -> bool:
        """True on the process that writes files and prints (rank 0)."""
        return self.trainer.args.process_index == 0


def run_train(
    cfg: TrainConfig, *, loss_fn: LossFn | None = None, regularizers: Sequence[Regularizer] = ()
) -> Path:
    """Fine-tune ``cfg.model_name_or_path`` on ``cfg.train_file``; returns ``output_dir/model`` or ``/adapter``.

    ``loss_fn`` replaces the config's loss and ``regularizers`` are added to the config's, for
    programmatic use (experiments, tests); the CLI passes neither.
    """
    if loss_fn is None and not regularizers:
        done = finished_output(cfg)
        if done is not None:
            Console().print(f"[dim]{cfg.output_dir}: finished earlier with this config; its result is {done}[/dim]")
            return done
    return finish_train(prepare_train(cfg, loss_fn=loss_fn, regularizers=regularizers))


def finished_output(cfg: TrainConfig) -> Path | None:
    """The model or adapter dir of a run that already finished in ``output_dir`` under the same config.

    A finished run is left alone rather than resumed from its last checkpoint: resuming would evaluate
    and save again, and a re-saved model dir looks new to anything that caches on it (audit samples).
    ``summary.json`` is written last and removed when a run starts, so it marks a finished run.
    """
    run_dir = Path(cfg.output_dir)
    if cfg.resume != "auto" or not (run_dir / "summary.json").is_file():
        return None
    if config_changes(run_dir / "config.yaml", cfg.model_dump(mode="json", by_alias=True), FINISHED_SAFE,
                      resolve_saved_config):
        return None
    finished = [run_dir / "model" / "config.json", run_dir / "adapter" / "adapter_config.json"]
    return next((marker.parent for marker in finished if marker.is_file()), None)


def resolve_saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A run dir's saved config as this version reads it: keys added since it was written (a new
    remedy's settings) take their defaults. One that no longer validates is compared as it stands."""
    try:
        return TrainConfig.model_validate(saved).model_dump(mode="json", by_alias=True)
    except ValidationError:
        return saved


def prepare_train(
    cfg: TrainConfig, *, loss_fn: LossFn | None = None, regularizers: Sequence[Regularizer] = ()
) -> TrainSession:
    """Everything before the first step: run dir, resume point, data, model, method, trainer, callbacks."""
    disable_library_bars()
    if cfg.packing:
        quiet_packed_padding_warning()
    reset_peak_memory()
    run_dir = Path(cfg.output_dir)
    base = _resolve_base(resolve_model(cfg.model_name_or_path, cfg.gguf_file).path)
    optim, optimizer_cls = optimizer_choice(cfg.optim, cfg.learning_rate)
    checkpoint = resolve_resume(cfg.resume, run_dir / "checkpoints")
    precision = training_precision(cfg, load_config(base, cfg.trust_remote_code))
    if cfg.bf16_weight_rounding == "dithered" and precision != "bf16":
        raise UserError(f"bf16_weight_rounding: dithered applies to bf16 steps, and dtype: {cfg.dtype} trains "
                        f"this model in {precision} here; set dtype: bfloat16, or drop the key")
    rounding = resolve_rounding(cfg.bf16_weight_rounding, precision == "bf16",
                                sharded=cfg.fsdp is not None or cfg.deepspeed is not None)
    args = training_arguments(cfg, run_dir, optim, resuming=checkpoint is not None, precision=precision)
    main = args.process_index == 0
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.resume == "never":
            # "never" means a fresh run: stale checkpoints would otherwise be picked by a later resume: auto.
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        if checkpoint:
            check_resume_config(run_dir, cfg.model_dump(mode="json", by_alias=True), checkpoint, RESUME_SAFE,
                                resolve_saved_config)
        (run_dir / "summary.json").unlink(missing_ok=True)  # this run is not finished until it writes its own
        dump_config(cfg, run_dir / "config.yaml")
    set_seed(cfg.seed)

    tokenizer = load_tokenizer(base, trust_remote_code=cfg.trust_remote_code)
    remedies = RemedyContext(cfg, tokenizer, run_dir, weight_rounding=rounding)
    with args.main_process_first(desc="reading and tokenizing data"):
        data = load_data(cfg, tokenizer, run_dir / "data" if main else None, remedies)

    model = load_model(
        base,
        dtype="float32",  # master weights stay fp32; bf16/fp16 training runs under autocast
        trust_remote_code=cfg.trust_remote_code,
        merge_adapter=is_adapter_dir(base),
        dropout=cfg.dropout,
        attn_implementation=training_attention(precision, "cuda" if torch.cuda.is_available() else "cpu",
                                               cfg.max_length),
    )
    _check_positions(model, cfg.max_length)
    if cfg.attn_implementation is not None:  # a kernel the config names replaces the automatic choice
        _set_attention(model, cfg.attn_implementation)
    model = apply_method(cfg, model)

    trainer = SFTLabTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        # Replay rows carry a mask the regularizers may use (KL on replay positions); the model never sees it.
        data_collator=SFTCollator(tokenizer, return_replay_mask=cfg.replay is not None),
        processing_class=tokenizer,
        loss_fn=loss_fn or build_loss(cfg),  # stage before_trainer
        optimizer_cls_and_kwargs=optimizer_cls,
    )
    remedies.trainer = trainer
    # Now that the Trainer has put the model on its device, and before train() loads a checkpoint: the
    # anchors, EWC's Fisher and the KL base must be the starting weights, and live beside the model.
    with args.main_process_first(desc="remedies (EWC Fisher)"):
        attach_remedies(remedies, "after_trainer")
    trainer.regularizers.extend(regularizers)
    attach_remedies(remedies, "before_compile")
    if cfg.torch_compile:
        # Last, so that the blocks' graphs include the hooks attached above and the KL base copy (taken
        # by kl_to_base) stays an eager module.
        if compile_blocks(trainer.model) == 0:
            raise UserError("torch_compile: this model has no list of repeated blocks to compile")
    attach_callbacks(trainer, run_dir, "train")
    trainer.add_callback(DatasetEpoch(data.train, log=trainer.log))
    if cfg.early_stopping_patience:
        trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    session = TrainSession(cfg, run_dir, trainer, data, checkpoint)
    if main:
        print_setup(Console(), session)
    return session


def finish_train(session: TrainSession) -> Path:
    """Train (or resume), evaluate at the end when there is eval data, save the model or adapter dir."""
    trainer, data = session.trainer, session.data
    trainer.start_clock(session.checkpoint)
    try:
        trainer.train(resume_from_checkpoint=session.checkpoint)
    except Exception as exc:
        if not (session.cfg.torch_compile and _is_compile_failure(exc)):
            raise
        # The checkpoints written so far stay; an eager rerun (same run dir) resumes from the newest.
        first = next(iter(str(exc).strip().splitlines()), "")[:300]
        raise UserError(f"torch_compile: compiling the blocks failed ({type(exc).__name__}: {first}); "
                        "set torch_compile: false, which resumes from the last checkpoint") from None
    train_seconds = trainer.train_seconds()
    if data.eval is not None and not _evaluated_at(trainer, trainer.state.global_step):
        trainer.evaluate()
    out = save_final(trainer, session.run_dir / ("adapter" if is_peft_model(trainer.model) else "model"))
    if session.main:
        _write_stats(session.run_dir / "data" / "stats.json", data)
        write_summary(session.run_dir / "summary.json", session, train_seconds)
        if not session.cfg.keep_checkpoints:
            # Only now: until summary.json exists the run is unfinished, and a rerun resumes from these.
            shutil.rmtree(session.run_dir / "checkpoints", ignore_errors=True)
        print_result(Console(), trainer, out, session.cfg.loss)
    return out


def _is_compile_failure(exc: Exception) -> bool:
    """Whether ``exc`` comes from torch.compile (dynamo tracing or inductor code generation)."""
    import torch._dynamo.exc  # loaded already when anything was compiled

    return isinstance(exc, torch._dynamo.exc.TorchDynamoException)


def write_summary(path: Path, session: TrainSession, train_seconds: float) -> dict[str, Any]:
    """Write ``summary.json``: what this run cost and reached, for sweeps and reports.

    ``train_seconds`` is the wall time in ``trainer.train``, over the whole run: a resumed run adds its own
    part to what its checkpoint recorded (steps done after that checkpoint by a killed process are not
    counted; the resumed process redoes them). ``peak_memory_mb`` is :func:`peak_memory_mb` since
    ``prepare_train`` began; losses
    come from the Trainer's log history, which a resumed run inherits from its checkpoint. ``eval_loss_*``
    is token cross-entropy on the eval set whatever the loss; ``eval_objective_*`` is the configured loss
    there (equal to it under cross-entropy).
    """
    trainer = session.trainer
    history = trainer.state.log_history
    trainable, total = count_parameters(trainer.model)
    first, last = summarize_logs(history, "eval_loss")
    objective_first, objective_last = summarize_logs(history, "eval_objective")
    summary = {
        "method": session.cfg.method,
        "precision": precision_name(trainer.args),
        # How the bf16 forward saw the fp32 weights; None when the steps were not bf16.
        "weight_rounding": None if not trainer.args.bf16 else "dithered" if trainer.weight_dither else "nearest",
        "global_step": trainer.state.global_step,
        "train_seconds": train_seconds,
        "trainable_params": trainable,
        "total_params": total,
        "peak_memory_mb": peak_memory_mb(),
        "final_train_loss": next((h["loss"] for h in reversed(history) if "loss" in h), None),
        "eval_loss_first": first,
        "eval_loss_last": last,
        "eval_objective_first": objective_first,
        "eval_objective_last": objective_last,
        # Per-parameter regularizer state (anchors, Fisher, frozen base) held on each rank, in bytes.
        "regularizer_state_bytes_per_rank": trainer.regularizer_state_bytes,
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, path)
    return summary


def reset_peak_memory() -> None:
    """Start a new peak: CUDA's allocator stats, and on Linux the process's peak RSS (``clear_refs`` 5)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux, or not allowed: the peak then covers the whole process so far


def peak_memory_mb() -> float | None:
    """Peak GPU memory allocated when on CUDA, else the process's peak RSS (VmHWM) since the last reset."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def training_precision(cfg: TrainConfig, model_config: PretrainedConfig) -> Literal["fp32", "bf16", "fp16"]:
    """The autocast precision a run trains in: ``bf16``/``fp16: true`` or an explicit ``dtype`` force it;
    ``dtype: auto`` takes bf16 where :func:`sftlab.models.load.resolve_dtype` finds it pays for this model
    on this machine (a GPU with bf16; a CPU with bf16 units for a wide enough model), else fp32.

    Master weights and optimizer state stay fp32 either way: accelerate wraps the forward in
    ``torch.autocast`` (TrainingArguments' ``bf16``), which runs matmuls in bf16 and keeps reductions,
    norms and the loss in fp32.
    """
    if cfg.bf16 or cfg.dtype == "bfloat16":
        return "bf16"
    if cfg.fp16 or cfg.dtype == "float16":
        return "fp16"
    if cfg.dtype == "float32":
        return "fp32"
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where the Trainer will put the model
    return "bf16" if resolve_dtype("auto", device, model_config) == torch.bfloat16 else "fp32"


def training_arguments(
    cfg: TrainConfig, run_dir: Path, optim: str, resuming: bool, precision: str = "fp32"
) -> TrainingArguments:
    """TrainingArguments from the config: names pass through; checkpoints go to ``run_dir/checkpoints``.
    ``precision`` (:func:`training_precision`) sets ``bf16`` / ``fp16`` autocast.

    With eval data, a fresh run also evaluates before the first step, so the summary shows eval loss
    from start to end even when ``eval_strategy`` is ``no``.
    """
    has_eval = bool(cfg.eval_file or cfg.eval_fraction > 0)
    save: dict[str, Any] = {"save_strategy": cfg.save_strategy, "save_steps": cfg.save_steps}
    early: dict[str, Any] = {}
    if cfg.early_stopping_patience:
        # Early stopping keeps the best checkpoint, so a checkpoint must exist at every evaluation.
        save = {"save_strategy": cfg.eval_strategy, "save_steps": cfg.eval_steps or cfg.logging_steps}
        early = {
            "load_best_model_at_end": True,
            "metric_for_best_model": cfg.metric_for_best_model,
            "greater_is_better": False,
            "restore_callback_states_from_checkpoint": True,
        }
    return make_training_arguments(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim=optim,
        seed=cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps,
        eval_strategy=cfg.eval_strategy,
        eval_steps=cfg.eval_steps,
        eval_on_start=has_eval and not resuming,
        save_total_limit=cfg.save_total_limit,
        prediction_loss_only=True,
        remove_unused_columns=False,  # the collator emits exactly what the model takes
        **save,
        **early,
        **engine_arguments(cfg),  # fsdp / deepspeed (sftlab.train.distributed)
    )


def load_data(
    cfg: TrainConfig, tokenizer: PreTrainedTokenizerBase, data_dir: Path | None, remedies: RemedyContext
) -> TrainData:
    """Read, split, tokenize: the train and eval datasets, with the ``data`` stage's remedies (replay).
    ``data_dir`` (main process) gets the quarantine."""
    read = read_records(
        cfg.train_file, quarantine=data_dir / "quarantine.jsonl" if data_dir else None, strict=cfg.strict_data
    )
    records = read.records
    if not records:
        raise UserError(
            f"no usable records in {', '.join(cfg.train_file)} ({len(read.rejected)} rejected"
            + (f", see {data_dir / 'quarantine.jsonl'}" if data_dir else "")
            + ")"
        )
    eval_read = None
    if cfg.eval_file:
        eval_read = read_records(
            [cfg.eval_file],
            quarantine=data_dir / "quarantine_eval.jsonl" if data_dir else None,
            strict=cfg.strict_data,
        )
        train_records, eval_records = records, eval_read.records
    elif cfg.eval_fraction > 0:
        train_records, eval_records = split_records(records, cfg.eval_fraction, cfg.seed)
    else:
        train_records, eval_records = records, []
    train = build_train_dataset(train_records, tokenizer, cfg, **dataset_arguments(remedies))
    evaluation = build_eval_dataset(eval_records, tokenizer, cfg) if eval_records else None
    return TrainData(train, evaluation, read, eval_read, len(train_records), len(eval_records))


def _resolve_base(name_or_path: str) -> str:
    """An existing local path becomes absolute, so an adapter dir records a base that loads from anywhere."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else name_or_path


def _check_positions(model: torch.nn.Module, max_length: int) -> None:
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit is not None and max_length > limit:
        raise UserError(
            f"max_length {max_length} exceeds what the model can attend to ({limit} positions); "
            f"set max_length <= {limit}"
        )


def _set_attention(model: torch.nn.Module, implementation: str) -> None:
    """Switch the attention kernel. With ``flash_attention_2`` and packing, transformers reads the
    document boundaries from the packed rows' ``position_ids`` (varlen attention, no block mask)."""
    try:
        model.set_attn_implementation(implementation)
    except (ImportError, ValueError) as exc:
        raise UserError(f"attn_implementation: {implementation} is not available here ({exc})") from None


def _evaluated_at(trainer: SFTLabTrainer, step: int) -> bool:
    return any("eval_loss" in h and h.get("step") == step for h in trainer.state.log_history)


def _write_stats(path: Path, data: TrainData) -> None:
    stats: dict[str, Any] = {
        "records": {"train": data.n_train_records, "eval": data.n_eval_records},
        "rejected": dict(data.read.counts),
        "rejected_eval": dict(data.eval_read.counts) if data.eval_read else {},
        "train_epochs": [data.train.history[e].as_dict() for e in sorted(data.train.history)],
        "eval": data.eval.stats.as_dict() if data.eval is not None else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stats, indent=2, default=str))
