"""``SFTLabTrainer``: a transformers.Trainer whose loss is a task loss plus named regularizer penalties.

Built on transformers.Trainer so that accelerate / torchrun, DDP, FSDP and DeepSpeed work unchanged.
What this subclass adds:

- **Composable loss.** ``loss = loss_fn(logits, labels, num_items_in_batch) + sum(penalty_i / G)``
  for the regularizers, where G is the number of micro-batches in this optimizer step. The task loss is
  normalised by ``num_items_in_batch`` (the target-token count of the whole accumulated, all-rank
  batch), so gradient accumulation and DDP give exactly the gradient of one big batch. Each penalty is a
  per-step quantity: each micro-batch adds 1/G of it. Every component is logged by name
  (``loss/task``, ``loss/<regularizer>``), with any ``log_sources`` (NEFTune's alpha).
- **Evaluation speaks cross-entropy.** ``eval_loss`` is always the token cross-entropy on the eval set
  (summed over every eval target token, divided by their count), whatever the training objective, so
  runs under GEM, label smoothing or DFT compare with plain SFT on one scale. The task loss the run
  optimises, on the same tokens and normalised the same way, is logged beside it as ``eval_objective``
  (regularizer penalties are not part of either).
- **A NaN or inf loss stops the run** with :class:`NonFiniteLossError` (a UserError: exit 2, no
  traceback) before the optimizer step, so the bad step changes no weight and saves nothing.
- **Regularizers follow the wrapped model.** Their state is built from the model before the Trainer
  wraps it; at the first training step (after DDP / FSDP2 / DeepSpeed wrapping) each regularizer's
  ``bind`` moves it onto the wrapped model's parameters, so under FSDP2 each rank keeps the slices of
  its own shards (``regularizer_state_bytes`` records what each rank then holds).
- **FSDP2 on CPU.** accelerate builds FSDP only on accelerator devices; in a multi-process CPU (gloo)
  run, the same FSDP2 plugin is switched on by hand, so the sharded path is the one tested here.
- **Atomic checkpoints.** Each checkpoint is written into ``checkpoints/.staging/`` and renamed into
  place only when complete, so a run killed mid-save never leaves a ``checkpoint-N`` that resume would
  pick up half-written. Each also records the training wall time spent so far (``TRAIN_TIME_FILE``), so
  that a resumed run's cost is the whole run's, not only its own part.
- **Logits in autocast's dtype.** accelerate's float32 cast of a mixed-precision model's outputs is
  removed (:func:`keep_autocast_outputs`): the losses upcast their own work, a slice at a time.
- **Dithered bf16 weights**, when ``weight_dither`` is set: each training forward and backward, and each
  evaluation, runs on the master weights rounded with fixed random thresholds, in place; the masters are
  rebuilt before the optimizer step (``sftlab.train.weight_rounding``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import time
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.utils.operations import ConvertOutputsToFp32
from transformers import Trainer, TrainerState, TrainingArguments
from transformers.trainer_pt_utils import nested_gather
from transformers.trainer_utils import (
    PREFIX_CHECKPOINT_DIR,
    EvalLoopOutput,
    TrainOutput,
    get_last_checkpoint,
    rotate_checkpoints,
)
from transformers.training_args import OptimizerNames

from sftlab.errors import UserError
from sftlab.models.tokens import IGNORE_INDEX
from sftlab.train.distributed import enable_fsdp_on_cpu, full_state_dict, is_fsdp2, local_bytes, per_rank, reshard
from sftlab.train.losses import LossFn, cross_entropy
from sftlab.train.regularizers import NOT_MODEL_INPUTS, SCORED_POSITIONS_KEY, Regularizer
from sftlab.train.weight_rounding import DitheredBf16

STAGING_DIR = ".staging"
TRAIN_TIME_FILE = "sftlab_train_seconds.json"  # in each checkpoint: training wall time up to that step
TRASH_DIR = ".trash"

# Optimizers torch has that TrainingArguments.optim does not name: passed as a class to the Trainer.
TORCH_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "radam": torch.optim.RAdam,
    "nadam": torch.optim.NAdam,
    "adamax": torch.optim.Adamax,
}
OPTIM_ALIASES = {"adamw": OptimizerNames.ADAMW_TORCH.value}


class NonFiniteLossError(UserError):
    """The training loss became NaN or inf; the run stopped before that step changed any weight."""


class SFTLabTrainer(Trainer):
    """transformers.Trainer with ``loss_fn`` + ``regularizers``, a NaN guard and atomic checkpoints."""

    def __init__(
        self,
        *args: Any,
        loss_fn: LossFn = cross_entropy,
        regularizers: Sequence[Regularizer] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self.regularizers = list(regularizers)
        # Our compute_loss takes num_items_in_batch and normalises by it: the Trainer must count target tokens
        # (over labels[..., 1:], since every LossFn shifts) and must not divide by the accumulation steps again.
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = True
        self.loss_is_scaled_for_ga = True
        # Callables whose values join every training log (e.g. NEFTune's alpha in effect).
        self.log_sources: list[Callable[[], dict[str, float]]] = []
        self._components: dict[str, torch.Tensor] = {}
        self._components_since = 0
        self._staging = False
        # Training wall time: what the checkpoint resumed from had recorded, and when this process began.
        self._seconds_before = 0.0
        self._train_started: float | None = None
        # Evaluation sums, over every eval target token: cross-entropy, the task objective, the token count.
        self._eval_sums: list[torch.Tensor] | None = None
        # Bytes of per-parameter regularizer state (anchors, Fisher, a frozen base) on each rank, once bound.
        self.regularizer_state_bytes: list[int] | None = None
        self._regularizers_bound = False
        # FreeLB (sftlab.train.adversarial): runs each micro-batch once per perturbation; None for plain steps.
        self.adversary: Any = None
        # Dithered bf16 weights for the training forward and backward (sftlab.train.weight_rounding), or None.
        self.weight_dither: DitheredBf16 | None = None

    def create_accelerator_and_postprocess(self) -> None:
        """The Trainer's accelerator; FSDP2 switched on for a multi-process CPU run, where accelerate
        would otherwise fall back to DDP and leave the fsdp settings unused."""
        super().create_accelerator_and_postprocess()
        if self.args.fsdp_plugin_args is not None and not self.is_fsdp_enabled:
            self.is_fsdp_enabled = enable_fsdp_on_cpu(self.accelerator, self.args.fsdp_plugin_args)

    def _bind_regularizers(self, model: torch.nn.Module) -> None:
        """Move every regularizer's state onto the wrapped model (see ``Regularizer``); once, before the
        first training forward, when every FSDP2 parameter is its registered shard."""
        unwrapped = self.accelerator.unwrap_model(model)
        if is_fsdp2(unwrapped):
            reshard(unwrapped)  # an evaluation before training leaves the root's weights gathered
        for reg in self.regularizers:
            bind = getattr(reg, "bind", None)
            if bind is not None:
                bind(unwrapped, self.accelerator)
        state = [t for reg in self.regularizers for t in getattr(reg, "state_tensors", list)()]
        self.regularizer_state_bytes = per_rank(local_bytes(state))
        self._regularizers_bound = True

    def train(self, resume_from_checkpoint: str | None = None, **kwargs: Any) -> TrainOutput:
        """Train, or resume; resuming a run that had finished (all planned steps, or stopped early)
        only loads its weights.

        (transformers 5.23 would run one extra step when ``max_steps`` ends mid-epoch: its epoch loop
        takes a step before it checks the step budget. And a stop asked by a callback, such as early
        stopping, is saved with the checkpoint but not honoured on resume.)
        """
        if resume_from_checkpoint is not None:
            state = TrainerState.load_from_json(os.path.join(resume_from_checkpoint, "trainer_state.json"))
            planned = self.set_initial_training_values(self.args, self.get_train_dataloader())[-1]
            control = state.stateful_callbacks.get("TrainerControl", {}).get("args", {})
            # A stop recorded before the old run's own step budget ran out came from a callback (early stopping).
            stopped_early = control.get("should_training_stop") and state.global_step < state.max_steps
            if state.global_step >= planned or stopped_early:
                self._load_from_checkpoint(resume_from_checkpoint)
                self.state = state
                return TrainOutput(state.global_step, float("nan"), {})
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    # ---- loss ------------------------------------------------------------------------------------

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """Task loss on the logits (labels kept away from the model, so it computes no loss of its own)
        plus, in training, every regularizer's penalty. Regularizers see the whole batch (``replay_mask`` too)."""
        if model.training and self.regularizers and not self._regularizers_bound:
            self._bind_regularizers(model)
        # At every call, not once: an evaluation before training prepares (and wraps) the model on its own.
        keep_autocast_outputs(model)
        labels = inputs["labels"]
        model_inputs = {k: v for k, v in inputs.items() if k not in NOT_MODEL_INPUTS}
        head = self._scoring_head(model)
        reg_inputs = inputs
        if head is not None:
            if self.regularizers and model.training:
                # Tells a regularizer reading logits (KL-to-base on responses) where the gathered rows come from.
                scored = torch.zeros_like(labels, dtype=torch.bool)
                scored[:, :-1] = labels[:, 1:] != IGNORE_INDEX
                reg_inputs = {**inputs, SCORED_POSITIONS_KEY: scored}
            with scored_positions_only(head, labels) as labels:
                outputs = model(**model_inputs)
            logits = outputs.logits
        else:
            outputs = model(**model_inputs)
            # Prompt tuning prepends virtual tokens: their logits come first and have no labels.
            logits = outputs.logits[:, outputs.logits.size(1) - labels.size(1) :]
        if not model.training and self._eval_sums is not None:
            loss = self._eval_step_loss(logits, labels)
            return (loss, outputs) if return_outputs else loss
        task = self.loss_fn(logits, labels, num_items_in_batch)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # num_items_in_batch counts every rank's tokens and DDP averages gradients over ranks:
            # scaling by the rank count makes the result the gradient of the global token mean.
            task = task * self.accelerator.num_processes
        passes = self.adversary.passes if model.training and self.adversary is not None else 1
        if passes > 1:
            # FreeLB visits this micro-batch once per perturbation: each visit's loss weighs 1 / passes.
            task = task / passes
        loss = task
        if model.training and self.regularizers:
            self._record("loss/task", task)
            steps = max(getattr(self, "current_gradient_accumulation_steps", 1), 1) * passes
            for reg in self.regularizers:
                # The model's own forward runs under accelerate's autocast (bf16 training); a regularizer's
                # forward (KL-to-base's base logits) must run in the same precision, or the KL between a model
                # and itself is not 0.
                with self.accelerator.autocast():
                    penalty = reg.penalty(model, reg_inputs, outputs) / steps
                self._record(f"loss/{reg.name}", penalty)
                loss = loss + penalty
        return (loss, outputs) if return_outputs else loss

    def _eval_step_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Add this eval batch's summed cross-entropy, summed objective and target count to the
        evaluation's sums; return its mean cross-entropy (what the Trainer's own loop records)."""
        assert self._eval_sums is not None
        # A LossFn divides its sum by num_items_in_batch: passing 1 gives the sum over this batch's targets.
        ce = cross_entropy(logits, labels, 1)
        objective = ce if self.loss_fn is cross_entropy else self.loss_fn(logits, labels, 1)
        count = (labels[:, 1:] != IGNORE_INDEX).sum()
        for i, value in enumerate((ce, objective, count)):
            self._eval_sums[i] = self._eval_sums[i] + value.detach().double()
        return ce / count.clamp(min=1)

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        """The Trainer's loop, with ``<prefix>_loss`` replaced by the token cross-entropy over the whole
        eval set and ``<prefix>_objective`` (the task loss) added.

        The Trainer's own figure is the mean over rows of each batch's token mean, which weighs a token
        by its batch's size; a sum over all tokens divided by their count is the cross-entropy of the set.
        In a multi-process run the sums are added over ranks; accelerate's even batches repeat a few
        rows on the last batch there, and those rows count twice.
        """
        self._eval_sums = [torch.zeros((), dtype=torch.float64, device=self.args.device) for _ in range(3)]
        # In a dithered run the eval forward sees the weights the training forward sees; the masters are back
        # before the Trainer's callbacks (early stopping, best-checkpoint saving) run.
        try:
            with self._dithered_weights():
                output = super().evaluation_loop(
                    dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
                )
            totals = torch.stack(self._eval_sums)
        finally:
            self._eval_sums = None
        if self.args.world_size > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        ce, objective, count = totals.tolist()
        if count > 0:
            output.metrics[f"{metric_key_prefix}_loss"] = ce / count
            output.metrics[f"{metric_key_prefix}_objective"] = objective / count
        return output

    def _dithered_weights(self) -> contextlib.AbstractContextManager[None]:
        """The dithered bf16 view of the trained weights for the duration, in a dithered run; else nothing."""
        return self.weight_dither.applied() if self.weight_dither is not None else contextlib.nullcontext()

    def _scoring_head(self, model: torch.nn.Module) -> torch.nn.Module | None:
        """The output head to feed scored positions only, or None when full logits are needed.

        A regularizer reads every position's logits unless it declares ``uses_logits = False`` (a pure
        weight penalty such as EWC or L2-SP) or ``scored_logits_suffice = True`` (KL-to-base on response
        or replay positions, which reads the gathered logits); one that does keeps the full logits.
        """
        if any(
            getattr(reg, "uses_logits", True) and not getattr(reg, "scored_logits_suffice", False)
            for reg in self.regularizers
        ):
            return None
        unwrapped = self.accelerator.unwrap_model(model)
        return unwrapped.get_output_embeddings() if hasattr(unwrapped, "get_output_embeddings") else None

    def _record(self, name: str, value: torch.Tensor) -> None:
        """Accumulate a loss component on its device; read out (one sync) only when the Trainer logs."""
        value = value.detach()
        if not self._components:
            # The first record since the last log (or since a resume): the steps to average over start here.
            self._components_since = self.state.global_step
        self._components[name] = self._components[name] + value if name in self._components else value

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """One forward/backward (one per perturbation under FreeLB); a non-finite loss raises before the
        optimizer can apply it."""
        with self._dithered_weights():  # the master weights are back in place before the optimizer step
            if self.adversary is not None:
                loss = self.adversary.training_step(
                    functools.partial(super().training_step, model, inputs, num_items_in_batch))
            else:
                loss = super().training_step(model, inputs, num_items_in_batch)
        bad = (~torch.isfinite(loss)).any().float()
        if self.args.world_size > 1:
            # Every rank must agree to stop, or the healthy ones would wait forever in the next all-reduce.
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item() > 0:
            raise NonFiniteLossError(self._non_finite_message(loss))
        return loss

    def _non_finite_message(self, loss: torch.Tensor) -> str:
        step = self.state.global_step + 1
        parts = ", ".join(f"{k} = {v.item():.4g}" for k, v in self._components.items())
        last = get_last_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
        kept = (
            f"The last good checkpoint is {last}; it is intact, and a rerun with resume: auto continues from it"
            if last
            else "No checkpoint was saved before it"
        )
        return (
            f"training loss became {loss.item()} at step {step} (epoch {self.state.epoch or 0:.2f})"
            + (f" [accumulated components: {parts}]" if parts else "")
            + f". The run stopped before this step changed any weight. {kept}. "
            "Usual causes: a learning rate too high, fp16 overflow, or a regularizer weight too large "
            "(lower learning_rate, set max_grad_norm, or check the data)."
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss component per optimizer step since the last training log, and the
        values of ``log_sources``."""
        if "loss" in logs and self._components:
            steps = max(self.state.global_step - self._components_since, 1)
            for name, total in self._components.items():
                logs[name] = nested_gather(total, self.args.parallel_mode).mean().item() / steps
            self._components = {}
        if "loss" in logs:
            for source in self.log_sources:
                logs.update(source())
        super().log(logs, start_time)

    # ---- atomic checkpoints ------------------------------------------------------------------------

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """Drop tied weights (an ``lm_head`` that is the input embedding) from the missing keys.

        save_pretrained stores a tied weight once, so on resume the Trainer reports the other name as
        missing although it is loaded through the tie; only truly missing weights should warn.
        """
        params = dict(self.model.named_parameters(remove_duplicate=False))
        missing = set(load_result.missing_keys)
        loaded = {id(p) for name, p in params.items() if name not in missing}
        truly_missing = [k for k in load_result.missing_keys if id(params.get(k)) not in loaded]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=truly_missing))

    def start_clock(self, checkpoint: str | None) -> None:
        """Start counting training time, from what ``checkpoint`` (the one resumed from, if any) recorded."""
        self._seconds_before = recorded_train_seconds(checkpoint) if checkpoint else 0.0
        self._train_started = time.perf_counter()

    def train_seconds(self) -> float:
        """Training wall time of the whole run so far: the resumed checkpoint's, plus this process's."""
        if self._train_started is None:
            return self._seconds_before
        return self._seconds_before + time.perf_counter() - self._train_started

    def _get_output_dir(self, trial: Any) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_DIR) if self._staging else run_dir

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """Let the Trainer write the checkpoint into ``.staging/``, then rename it into place."""
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged, final = run_dir / STAGING_DIR / name, run_dir / name
        if self.args.should_save:
            shutil.rmtree(run_dir / STAGING_DIR, ignore_errors=True)  # left by a save that was killed
        self.accelerator.wait_for_everyone()
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        # Every rank has written its own files (rng_state_<rank>.pth) before the directory moves.
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            self._point_best_at_final(run_dir)
            self.state.save_to_json(str(staged / "trainer_state.json"))
            (staged / TRAIN_TIME_FILE).write_text(json.dumps({"train_seconds": self.train_seconds()}))
            _fsync_tree(staged)
            if final.exists():  # the same step saved twice: replace it, never leave a step without one
                os.rename(final, run_dir / TRASH_DIR)
            os.rename(staged, final)
            _fsync_dir(run_dir)
            shutil.rmtree(run_dir / TRASH_DIR, ignore_errors=True)
            shutil.rmtree(run_dir / STAGING_DIR, ignore_errors=True)
            rotate_checkpoints(str(run_dir), self.args.save_total_limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def _point_best_at_final(self, run_dir: Path) -> None:
        """The Trainer looked for the best checkpoint inside ``.staging``; record its final path instead."""
        best = self.state.best_global_step
        if best:
            path = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{best}"
            self.state.best_model_checkpoint = str(path) if best == self.state.global_step or path.is_dir() else None


def keep_autocast_outputs(model: torch.nn.Module) -> None:
    """Let a mixed-precision model's outputs keep autocast's dtype: remove the float32 cast that accelerate
    wraps around its forward (``ConvertOutputsToFp32``), and keep the autocast inside it.

    Every loss and regularizer here upcasts its own vocabulary-wide work to float32, a slice at a time
    (the sliced cross-entropy) or where it reads the logits; the wrapper's cast instead copies the whole
    [N, V] bf16 logits to float32 in the forward, and makes autograd copy their float32 gradient back to
    bf16 in the backward: two passes over 52 MB a step on SmolLM2 at 8 x 96. The values are the same,
    since bf16 to float32 is exact. Looks through ``.module`` (DDP, DeepSpeed); a no-op for a model
    accelerate did not wrap, and after the first call.
    """
    while model is not None:
        inner = getattr(model.__dict__.get("forward"), "__wrapped__", None)
        if isinstance(inner, ConvertOutputsToFp32):
            forward = inner.model_forward
            model.forward = forward if hasattr(forward, "__self__") else types.MethodType(forward, model)
            return
        model = getattr(model, "module", None)


@contextlib.contextmanager
def scored_positions_only(head: torch.nn.Module, labels: torch.Tensor) -> Iterator[torch.Tensor]:
    """Run the output head only on the positions the loss scores; yields the labels that go with them.

    Position t's logits predict label t+1, so only positions with ``labels[:, t+1] != -100`` are ever
    scored. With completion-only loss most positions are prompt: computing (and backpropagating) their
    vocabulary-wide logits and log-softmax is wasted work, a large share of a small model's step.
    A forward pre-hook on the head gathers the scored hidden states, in row-major order, into one
    sequence ``[1, N+1, d]`` (the last row is a zero that no label scores); the yielded labels
    ``[1, N+1]`` are ``[-100, targets...]``, so any shifting LossFn (cross-entropy, label smoothing,
    GEM, DFT) scores exactly the same (logit, target) pairs as on the full ``[B, T, V]`` logits.
    Virtual tokens that prompt tuning prepends are skipped: hidden states are aligned to the labels
    from the right.
    """
    keep = labels[:, 1:] != IGNORE_INDEX
    targets = labels[:, 1:][keep]
    gathered_labels = torch.cat([targets.new_full((1,), IGNORE_INDEX), targets]).unsqueeze(0)

    def gather(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        hidden = args[0]
        offset = hidden.size(1) - labels.size(1)
        scored = hidden[:, offset:-1][keep]
        return (torch.cat([scored, scored.new_zeros(1, scored.size(-1))]).unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        yield gathered_labels
    finally:
        handle.remove()


def _fsync_tree(path: Path) -> None:
    """Flush every file under ``path`` to disk, so the rename never publishes data still in the page cache."""
    for file in path.rglob("*"):
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(path)


def _share_permissions(path: Path) -> None:
    """Give files the permissions the umask allows (safetensors writes them 0600 through a temp file)."""
    umask = os.umask(0)
    os.umask(umask)
    for file in path.rglob("*"):
        if file.is_file():
            file.chmod(0o666 & ~umask)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def last_complete_checkpoint(checkpoints_dir: str | Path) -> str | None:
    """The newest ``checkpoint-N`` under ``checkpoints_dir`` (``.staging`` leftovers never count)."""
    path = Path(checkpoints_dir)
    return get_last_checkpoint(str(path)) if path.is_dir() else None


def resolve_resume(resume: str, checkpoints_dir: Path) -> str | None:
    """``auto``: the last complete checkpoint, if any; ``never``: none; otherwise a checkpoint dir path."""
    if resume == "auto":
        return last_complete_checkpoint(checkpoints_dir)
    if resume == "never":
        return None
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise UserError(
            f"resume: {resume} is not a checkpoint dir (no trainer_state.json inside); "
            "use auto, never, or a checkpoints/checkpoint-N dir"
        )
    return str(path)


def optimizer_choice(optim: str, learning_rate: float) -> tuple[str, tuple[type, dict[str, Any]] | None]:
    """Map ``optim`` to a TrainingArguments name, or to a torch optimizer class the Trainer is handed."""
    if optim in TORCH_OPTIMIZERS:
        return OptimizerNames.ADAMW_TORCH.value, (TORCH_OPTIMIZERS[optim], {"lr": learning_rate})
    name = OPTIM_ALIASES.get(optim, optim)
    valid = {o.value for o in OptimizerNames}
    if name not in valid:
        choices = sorted(valid | set(TORCH_OPTIMIZERS) | set(OPTIM_ALIASES))
        raise UserError(f"optim: unknown optimizer {optim!r}; choose one of {', '.join(choices)}")
    return name, None


def device_arguments() -> dict[str, Any]:
    """CPU-sane, offline-safe device settings for TrainingArguments.

    ``use_cpu`` when no GPU is present (pinned memory is pointless there); the gloo backend only for a
    multi-process CPU run; no unused-parameter search in DDP (every trainable weight is used each step);
    no reporting integrations.
    """
    on_gpu = torch.cuda.is_available()
    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return {
        "use_cpu": not on_gpu,
        "dataloader_pin_memory": on_gpu,
        "ddp_backend": "gloo" if multi and not on_gpu else None,
        "ddp_find_unused_parameters": False,
        "report_to": "none",
        "disable_tqdm": True,
    }


def make_training_arguments(**kwargs: Any) -> TrainingArguments:
    """TrainingArguments with :func:`device_arguments`; a rejected value becomes a UserError."""
    try:
        return TrainingArguments(**{**device_arguments(), **kwargs})
    except ValueError as exc:
        raise UserError(f"invalid training settings: {exc}") from None


ConfigNormalizer = Callable[[dict[str, Any]], dict[str, Any]]


def config_changes(
    saved_yaml: Path, current: dict[str, Any], ignore: set[str], normalize: ConfigNormalizer | None = None
) -> list[str]:
    """Top-level keys whose value differs between a run dir's saved ``config.yaml`` and ``current``.

    ``normalize`` resolves the saved config as the current version would (keys added since it was
    written take their defaults), so a run dir from before a new config key is not taken for another run.
    """
    import yaml

    if not saved_yaml.is_file():
        return []
    saved = yaml.safe_load(saved_yaml.read_text()) or {}
    if normalize is not None:
        saved = normalize(saved)
    keys = (set(saved) | set(current)) - ignore
    return sorted(k for k in keys if saved.get(k) != current.get(k))


def check_resume_config(
    run_dir: Path,
    current: dict[str, Any],
    checkpoint: str,
    ignore: set[str],
    normalize: ConfigNormalizer | None = None,
) -> None:
    """Refuse to resume ``checkpoint`` under a config that changes what the run trains."""
    changed = config_changes(run_dir / "config.yaml", current, ignore, normalize)
    if changed:
        raise UserError(
            f"{run_dir} holds checkpoints of a run with a different config (changed: {', '.join(changed)}), "
            f"so resuming from {checkpoint} would mix two runs. Use a new output_dir, set resume: never to "
            "start over in this one, or restore the old values."
        )


def recorded_train_seconds(checkpoint: str | Path) -> float:
    """The training time a checkpoint recorded; 0 for one written before checkpoints recorded it."""
    path = Path(checkpoint) / TRAIN_TIME_FILE
    return float(json.loads(path.read_text())["train_seconds"]) if path.is_file() else 0.0


def save_final(trainer: Trainer, out_dir: Path) -> Path:
    """Save the trained model (full dir, or adapter dir for PEFT) with its tokenizer, atomically.

    ``trainer.save_model`` runs on every rank (FSDP/DeepSpeed gather there); the main process then
    renames the finished dir into place.
    """
    staged = out_dir.parent / f".{out_dir.name}.partial"
    if trainer.args.should_save:
        shutil.rmtree(staged, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    with full_state_dict(trainer.accelerator):  # a plain model dir even when FSDP checkpoints are sharded
        trainer.save_model(str(staged))
    trainer.accelerator.wait_for_everyone()
    if trainer.args.should_save:
        # The Trainer pickles its arguments beside the weights; the run's config.yaml already records them,
        # and a model dir meant for sharing should hold nothing that needs unpickling.
        (staged / "training_args.bin").unlink(missing_ok=True)
        _share_permissions(staged)
        _fsync_tree(staged)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.rename(staged, out_dir)
    trainer.accelerator.wait_for_everyone()
    return out_dir
