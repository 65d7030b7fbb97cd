"""``AuditCallback``: a light sftlab audit inside any ``transformers.Trainer`` loop (TRL's SFTTrainer included).

    from sftlab.integrations import AuditCallback

    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=lora)
    AuditCallback(every_n_steps=50, sft_data="train.jsonl", fail_on="style_capture>30").attach(trainer)
    trainer.train()

Every ``every_n_steps`` steps (and, with ``on_evaluate``, at each evaluation) it audits the model being trained
against its base (:class:`sftlab.integrations.light_audit.LightAudit`: the forgetting forecast on the SFT
prompts, style capture and adherence on a few chat-suite prompts, perplexity on a few text-suite paragraphs) and
logs each change through ``trainer.log`` as ``audit/<measure>`` (with ``audit/<measure>_low`` and
``_high``, its 95% interval), so TensorBoard, W&B and ``trainer.state.log_history`` see them. With
``fail_on`` (``--fail-on`` checks) it stops training once a check fails.

The base: with PEFT it is the same model with its adapter disabled, so no second copy is held. With full
fine-tuning the callback keeps one frozen copy of the model as it was when training began: as many bytes as
the model's parameters (SmolLM2-135M in fp32: 0.54 GB); :attr:`AuditCallback.base_copy_bytes` says how many.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from sftlab.audit.gate import Check, check_names, evaluate, parse_checks
from sftlab.audit.gate_value import GateValue
from sftlab.errors import UserError
from sftlab.integrations.light_audit import LightAudit, LightAuditSettings

log = logging.getLogger(__name__)

# What the light audit measures (its text suite is one corpus, so ``perplexity`` names it too).
LIGHT_MEASURES = ("style_capture", "adherence", "perplexity", "perplexity_wikitext2", "forecast_kl")
NEEDS_SFT = ("style_capture", "forecast_kl")


class _AdapterDisabled(torch.nn.Module):
    """A PEFT model seen with its adapter off: the base, without a second copy of its weights."""

    def __init__(self, peft_model: Any) -> None:
        super().__init__()
        object.__setattr__(self, "peft_model", peft_model)  # not a submodule: no parameters are duplicated

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self.peft_model.disable_adapter():
            return self.peft_model(*args, **kwargs)

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]:
        return self.peft_model.parameters(recurse)

    def get_output_embeddings(self) -> torch.nn.Module | None:
        # Teacher forcing (the forecast) hooks the output head to project only the scored positions.
        return self.peft_model.get_output_embeddings()

    @property
    def config(self) -> Any:
        return self.peft_model.config


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of ``model`` in eval mode that computes with its own weights, as a model loaded from disk does.

    A trainer may replace a module's ``forward`` on the instance with a closure over the original bound method
    (TRL's SFTTrainer does, for its fused LM head: ``model.forward = MethodType(_fused_forward, model)``, where
    ``_fused_forward`` calls the captured ``original_forward`` of the model it patched). ``copy.deepcopy`` copies
    the weights but not the closure, so such a copy runs the *trained* model's forward: the base then moves with
    training, and the forgetting forecast, which runs both models at each audit, reads 0. Each module of the copy
    gets its class's ``forward`` back, on its own parameters; the standalone audit's base, loaded from disk, runs
    its class's forward too.
    """
    base = copy.deepcopy(model)
    for module in base.modules():
        module.__dict__.pop("forward", None)  # an instance-level patch; the class's forward stays
    return base.eval().requires_grad_(False)


def _is_peft(model: Any) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode, no gradients, and the KV cache on (trainers turn it off for gradient checkpointing), as the
    audit runs a model loaded from disk; the training state is restored after."""
    was_training = model.training
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    model.eval()
    if config is not None:
        config.use_cache = True
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
        if config is not None:
            config.use_cache = use_cache


class AuditCallback(TrainerCallback):
    """Audit the model in training against its base every N steps or evaluations; log ``audit/*``; optionally stop.

    ``sft_data``: the training set as a records file (the forecast's prompts, style capture's SFT answers); None
    leaves out both. ``fail_on``: ``--fail-on`` checks (``style_capture>30``, ``perplexity>+10%``...); with
    ``fail_on_interval`` a check fails only when its whole 95% interval is past the threshold.
    """

    def __init__(self, every_n_steps: int | None = None, on_evaluate: bool = False, sft_data: str | None = None,
                 fail_on: str | Sequence[str] | None = None, fail_on_interval: bool = False,
                 settings: LightAuditSettings | None = None) -> None:
        if every_n_steps is None and not on_evaluate:
            raise UserError("AuditCallback: give every_n_steps, or on_evaluate=True, or both")
        if every_n_steps is not None and every_n_steps < 1:
            raise UserError(f"AuditCallback: every_n_steps must be at least 1, got {every_n_steps}")
        self.every_n_steps, self.on_evaluate_too = every_n_steps, on_evaluate
        self.sft_data, self.settings = sft_data, settings or LightAuditSettings()
        self.checks: list[Check] = parse_checks([fail_on] if isinstance(fail_on, str) else fail_on) if fail_on else []
        check_names(self.checks, LIGHT_MEASURES if sft_data else [m for m in LIGHT_MEASURES if m not in NEEDS_SFT])
        self.fail_on_interval = fail_on_interval
        self.trainer: Any = None
        self.audit: LightAudit | None = None
        self.base: torch.nn.Module | None = None
        self.base_copy_bytes = 0
        self.history: list[tuple[int, dict[str, GateValue]]] = []  # (step, values) of every audit run
        self.stopped_by: list[str] = []  # the checks that stopped training

    def attach(self, trainer: Any) -> AuditCallback:
        """Add this callback to ``trainer`` and log through it (``trainer.log``, so every logger sees the values)."""
        self.trainer = trainer
        trainer.add_callback(self)
        return self

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: Any = None, processing_class: Any = None, **kwargs: Any) -> None:
        if self.trainer is None:
            raise UserError("AuditCallback: add it with callback.attach(trainer), so it can log through the trainer")
        tokenizer = processing_class if processing_class is not None else getattr(self.trainer, "processing_class", None)
        if tokenizer is None:
            raise UserError("AuditCallback: the trainer has no tokenizer (processing_class) to prompt the model with")
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor wraps its tokenizer
        device = str(next(model.parameters()).device)
        self.audit = LightAudit(tokenizer, self.sft_data, self.settings, device)
        with _eval_mode(model):
            if _is_peft(model):
                self.base = _AdapterDisabled(model)
                self.audit.run_base(model, model.disable_adapter())
            else:
                self.base = frozen_copy(model)
                self.base_copy_bytes = sum(p.numel() * p.element_size() for p in self.base.parameters())
                log.info("AuditCallback holds a frozen copy of the base: %.2f GB", self.base_copy_bytes / 1e9)
                self.audit.run_base(self.base)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: Any = None, **kwargs: Any) -> None:
        if self.every_n_steps and state.global_step % self.every_n_steps == 0:
            self._audit(model, state, control)

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: Any = None, **kwargs: Any) -> None:
        if self.on_evaluate_too and not (self.history and self.history[-1][0] == state.global_step):
            self._audit(model, state, control)

    def _audit(self, model: Any, state: TrainerState, control: TrainerControl) -> None:
        assert self.audit is not None and self.base is not None
        with _eval_mode(model):
            values = self.audit.measure(model, self.base, state.global_step)
        self.history.append((state.global_step, values))
        logs: dict[str, float] = {}
        for name, v in values.items():
            logs[f"audit/{name}"] = v.change
            if v.low is not None and v.high is not None:
                logs[f"audit/{name}_low"], logs[f"audit/{name}_high"] = v.low, v.high
        self.trainer.log(logs)
        if self.checks:
            failed = [v for v in evaluate(self.checks, {"tuned": values}, self.fail_on_interval) if v.failed]
            if failed:
                self.stopped_by = [v.check.text for v in failed]
                log.warning("AuditCallback: stopping at step %d, %s", state.global_step, ", ".join(self.stopped_by))
                control.should_training_stop = True
