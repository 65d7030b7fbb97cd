"""TrainingArguments as sftlab builds them: device settings that are sane on CPU and offline, and optimizers
by name (torch's own where transformers does not name one)."""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.training_args import OptimizerNames

from sftlab.errors import UserError

# Optimizers torch has that TrainingArguments.optim does not name: passed as a class to the Trainer.
TORCH_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "radam": torch.optim.RAdam,
    "nadam": torch.optim.NAdam,
    "adamax": torch.optim.Adamax,
}
OPTIM_ALIASES = {"adamw": OptimizerNames.ADAMW_TORCH.value}


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
