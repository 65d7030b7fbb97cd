"""Training methods: which weights a fine-tune changes, set up through PEFT where PEFT has the method.

One small function per method, PEFT-tuner style: each turns the train config into a ``peft`` config (or,
for ``freeze``, sets ``requires_grad`` in place). :func:`apply_method` picks by ``cfg.method``.

- ``full``: every weight trains.
- ``lora`` / ``dora``: low-rank adapters (Hu et al. 2021; DoRA, Liu et al. 2024) on the target modules.
- ``prefix``: prefix tuning (Li & Liang 2021), trained key/value prefixes in every layer.
- ``prompt``: prompt tuning (Lester et al. 2021), trained virtual input embeddings.
- ``ia3``: IA3 (Liu et al. 2022), learned rescaling of attention and feed-forward activations.
- ``freeze``: only the top-k transformer blocks and/or modules named by substring train.

LoRA's target modules (``lora.target_modules``): ``all-linear`` (the default) adapts every Linear/Conv1D
layer except the output head, PEFT's ``all-linear`` rule, as LLaMA-Factory (``lora_target: all``) and
Axolotl (``lora_target_linear``) do; on SmolLM2 that is q/k/v/o and gate/up/down in every block.
``peft-default`` takes PEFT's per-architecture table instead (Llama: ``q_proj``, ``v_proj``, as in the
LoRA paper), with an architecture PEFT does not know falling back to all-linear. A list names the
modules.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoConfig, PreTrainedModel
from transformers.pytorch_utils import Conv1D

from sftlab.errors import UserError
from sftlab.io import replace_dir, staging_dir

if TYPE_CHECKING:
    from peft import PeftConfig

    from sftlab.config import TrainConfig

def _lora_targets_table() -> dict[str, list[str]]:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    return TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Leaf names of every Linear/Conv1D layer except the output head (PEFT's ``all-linear`` rule; the
    tests check that PEFT adapts exactly these)."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not output
    }
    return sorted(names)


def detect_target_modules(model: PreTrainedModel) -> list[str]:
    """LoRA target modules for ``model``: PEFT's table for its ``model_type``, else all Linear/Conv1D layers."""
    targets = _lora_targets_table().get(getattr(model.config, "model_type", ""))
    if targets:
        return list(targets)
    names = linear_module_names(model)
    if not names:
        raise UserError(
            f"found no Linear/Conv1D layers to adapt in {type(model).__name__}; set lora.target_modules"
        )
    return names


def _check_targets(model: PreTrainedModel, targets: list[str]) -> None:
    """A target that matches no module is a typo; say which names exist instead of letting PEFT fail later."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    full = {name for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in leaves and not any(n.endswith(t) for n in full)]
    if missing:
        raise UserError(
            f"lora.target_modules {missing} match no module of {type(model).__name__}; "
            f"Linear layers it has: {', '.join(linear_module_names(model))}"
        )


def _targets_conv1d(model: PreTrainedModel, targets: list[str]) -> bool:
    """True when the targets are GPT-2-style Conv1D layers, whose weight is stored (in, out): PEFT must
    then transpose (``fan_in_fan_out``); saying so up front spares its warning."""
    return any(
        isinstance(module, Conv1D) and any(name == t or name.endswith(f".{t}") for t in targets)
        for name, module in model.named_modules()
    )


def lora_config(cfg: TrainConfig, model: PreTrainedModel) -> PeftConfig:
    """LoRA: W + (alpha/r) B A on the target modules (alpha/sqrt(r) with ``use_rslora``)."""
    from peft import LoraConfig, TaskType

    setting = cfg.lora.target_modules
    targets: list[str] | str
    if setting == "all-linear":
        linear = linear_module_names(model)
        if not linear:
            raise UserError(f"found no Linear/Conv1D layers to adapt in {type(model).__name__}; "
                            "set lora.target_modules")
        targets = "all-linear"  # PEFT resolves it (every Linear/Conv1D but the output head)
        conv1d = _targets_conv1d(model, linear)
    else:
        targets = detect_target_modules(model) if setting == "peft-default" else list(setting)
        _check_targets(model, targets)
        conv1d = _targets_conv1d(model, targets)
    return LoraConfig(
        fan_in_fan_out=conv1d,
        task_type=TaskType.CAUSAL_LM,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=targets,
        use_rslora=cfg.lora.use_rslora,
        use_dora=cfg.method == "dora",
    )


def prefix_config(cfg: TrainConfig, model: PreTrainedModel) -> PeftConfig:
    """Prefix tuning: ``num_virtual_tokens`` trained key/value vectors prepended in every layer."""
    from peft import PrefixTuningConfig, TaskType

    return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.prompt_tuning.num_virtual_tokens)


def prompt_config(cfg: TrainConfig, model: PreTrainedModel) -> PeftConfig:
    """Prompt tuning: ``num_virtual_tokens`` trained embeddings prepended to the input."""
    from peft import PromptTuningConfig, TaskType

    return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.prompt_tuning.num_virtual_tokens)


def ia3_config(cfg: TrainConfig, model: PreTrainedModel) -> PeftConfig:
    """IA3: learned vectors that rescale attention keys/values and feed-forward activations."""
    from peft import IA3Config, TaskType
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS

    model_type = getattr(model.config, "model_type", "")
    if model_type not in TARGETS:
        raise UserError(
            f"method ia3 has no module table for model type {model_type!r}; use lora (any architecture) instead"
        )
    return IA3Config(task_type=TaskType.CAUSAL_LM, fan_in_fan_out=_targets_conv1d(model, TARGETS[model_type]))


def transformer_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's stack of transformer blocks: its longest ModuleList (``transformer.h``, ``model.layers``)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    if not lists:
        raise UserError(f"method freeze: found no stack of transformer blocks in {type(model).__name__}")
    return max(lists, key=len)


def apply_freeze(cfg: TrainConfig, model: PreTrainedModel) -> PreTrainedModel:
    """Freeze everything, then unfreeze the top ``trainable_top_k_layers`` blocks and named modules.

    A parameter stays trainable when it lies in one of the last k blocks or its name contains one of
    ``freeze.trainable_modules``. With tied embeddings, naming ``lm_head`` also trains the input embedding.
    """
    settings = cfg.freeze
    model.requires_grad_(False)
    blocks = transformer_blocks(model)
    k = settings.trainable_top_k_layers
    if k > len(blocks):
        raise UserError(f"freeze.trainable_top_k_layers is {k} but the model has {len(blocks)} blocks")
    for block in list(blocks)[len(blocks) - k :]:
        block.requires_grad_(True)
    unmatched = set(settings.trainable_modules)
    for name, param in model.named_parameters():
        for pattern in settings.trainable_modules:
            if pattern in name:
                param.requires_grad_(True)
                unmatched.discard(pattern)
    if unmatched:
        raise UserError(f"freeze.trainable_modules {sorted(unmatched)} match no parameter name of the model")
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError("method freeze leaves nothing to train: set trainable_top_k_layers or trainable_modules")
    return model


PEFT_METHODS: dict[str, Callable[[TrainConfig, PreTrainedModel], PeftConfig]] = {
    "lora": lora_config,
    "dora": lora_config,
    "prefix": prefix_config,
    "prompt": prompt_config,
    "ia3": ia3_config,
}


def apply_method(cfg: TrainConfig, model: PreTrainedModel) -> torch.nn.Module:
    """Return the model ready to train with ``cfg.method``: itself, frozen in part, or wrapped by PEFT."""
    if cfg.method == "full":
        return model
    if cfg.method == "freeze":
        return apply_freeze(cfg, model)
    from peft import get_peft_model

    from sftlab.models.load import peft_gc_probe_quiet

    with peft_gc_probe_quiet():
        return get_peft_model(model, PEFT_METHODS[cfg.method](cfg, model))


def is_peft_model(model: torch.nn.Module) -> bool:
    """True for a PEFT-wrapped model (its output is an adapter dir, not a full model dir)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, allow_pickle: bool = False) -> Path:
    """Fold a PEFT adapter into its base and save a full model dir (safetensors) with the tokenizer.

    The merge runs in float32 and the result is cast back to the base checkpoint's dtype. ``allow_pickle``
    lets ``*.bin`` pickled weights load (``--allow-pickle``).
    """
    from sftlab.models.load import (
        adapter_base_path,
        adapter_is_mergeable,
        adapter_peft_type,
        is_adapter_dir,
        load_model,
        load_tokenizer,
    )

    adapter_dir, out = Path(adapter_dir), Path(out_dir)
    if not is_adapter_dir(adapter_dir):
        raise UserError(f"{adapter_dir} is not a PEFT adapter dir (no adapter_config.json inside)")
    if not adapter_is_mergeable(adapter_dir):
        raise UserError(
            f"{adapter_dir}: a {adapter_peft_type(adapter_dir)} adapter adds virtual tokens and cannot be merged into the weights; "
            "load it with peft.PeftModel.from_pretrained instead"
        )
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} exists and is not empty; pick a new dir")
    base_dtype = AutoConfig.from_pretrained(adapter_base_path(adapter_dir)).dtype
    model = load_model(str(adapter_dir), dtype="float32", merge_adapter=True, allow_pickle=allow_pickle)
    if isinstance(base_dtype, str):
        base_dtype = getattr(torch, base_dtype, None)
    if isinstance(base_dtype, torch.dtype):
        model = model.to(base_dtype)
    # Built aside and moved in whole: a merge killed half-way leaves no half model dir at --out.
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = staging_dir(out)
    model.save_pretrained(str(staged))
    load_tokenizer(str(adapter_dir)).save_pretrained(str(staged))
    if out.exists():
        out.rmdir()  # empty (checked above): replace_dir would otherwise keep it aside for nothing
    return replace_dir(staged, out)
