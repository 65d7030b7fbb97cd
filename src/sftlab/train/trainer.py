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
  removed (``sftlab.train.head_outputs.keep_autocast_outputs``): the losses upcast their own work, a
  slice at a time.
- **Dithered bf16 weights**, when ``weight_dither`` is set: each training forward and backward, and each
  evaluation, runs on the master weights rounded with fixed random thresholds, in place; the masters are
  rebuilt before the optimizer step (``sftlab.train.weight_rounding``).

Beside it: ``training_args`` (TrainingArguments and optimizers by name), ``resume`` (which checkpoint,
and the config check), ``run_dir`` (atomic checkpoint and model dirs, ``save_final``), ``head_outputs``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerState
from transformers.trainer_pt_utils import nested_gather
from transformers.trainer_utils import (
    PREFIX_CHECKPOINT_DIR,
    EvalLoopOutput,
    TrainOutput,
    get_last_checkpoint,
    rotate_checkpoints,
)

from sftlab.errors import UserError
from sftlab.io import fsync_dir, fsync_tree, remove_tree
from sftlab.models.tokens import IGNORE_INDEX
from sftlab.train.distributed import enable_fsdp_on_cpu, is_fsdp2, local_bytes, per_rank, reshard
from sftlab.train.head_outputs import keep_autocast_outputs, scored_positions_only
from sftlab.train.losses import LossFn, cross_entropy
from sftlab.train.regularizers import NOT_MODEL_INPUTS, SCORED_POSITIONS_KEY, Regularizer
from sftlab.train.run_dir import STAGING_DIR, TRAIN_TIME_FILE, TRASH_DIR, recorded_train_seconds
from sftlab.train.weight_rounding import DitheredBf16

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
        # Replaces the training loss when set: called as objective(model, inputs, global_step) -> the micro-batch's
        # mean loss (on-policy distillation, sftlab.train.onpolicy_distill, whose batches are prompts).
        self.objective: Callable[[torch.nn.Module, dict[str, Any], int], torch.Tensor] | None = None

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
        if model.training and self.objective is not None:
            # A mean per micro-batch: each of the G micro-batches of an optimizer step weighs 1/G.
            steps = max(getattr(self, "current_gradient_accumulation_steps", 1), 1)
            loss = self.objective(model, inputs, self.state.global_step) / steps
            return (loss, None) if return_outputs else loss
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
            remove_tree(run_dir / STAGING_DIR, run_dir, ignore_errors=True)  # left by a save that was killed
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
            fsync_tree(staged)
            if final.exists():  # the same step saved twice: replace it, never leave a step without one
                os.rename(final, run_dir / TRASH_DIR)
            os.rename(staged, final)
            fsync_dir(run_dir)
            remove_tree(run_dir / TRASH_DIR, run_dir, ignore_errors=True)
            remove_tree(run_dir / STAGING_DIR, run_dir, ignore_errors=True)
            rotate_checkpoints(str(run_dir), self.args.save_total_limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def _point_best_at_final(self, run_dir: Path) -> None:
        """The Trainer looked for the best checkpoint inside ``.staging``; record its final path instead."""
        best = self.state.best_global_step
        if best:
            path = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{best}"
            self.state.best_model_checkpoint = str(path) if best == self.state.global_step or path.is_dir() else None
