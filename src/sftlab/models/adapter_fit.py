"""Does a PEFT adapter fit a base model? Checked from file headers, before any weights load.

An audit applies a user's adapter to the base it was told to use (``--base``), which may not be the one the
adapter's ``adapter_config.json`` records. An adapter trained on another architecture names modules the base
does not have, or has other shapes; found here, it fails in a second, not after the base has been sampled.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, PretrainedConfig

from sftlab.errors import UserError

_PREFIX = "base_model.model."
_LORA_PARTS = (".lora_A", ".lora_B")


def adapter_misfit(adapter_dir: str | Path, base_config: PretrainedConfig) -> str | None:
    """Why the LoRA weights of ``adapter_dir`` cannot sit on a model built from ``base_config`` (None: they can).

    Each ``lora_A`` must read the input width, and each ``lora_B`` write the output width, of a linear layer of
    the base with the same name. Adapters without LoRA weights (prompt tuning, IA3) are left to PEFT.
    """
    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if not weights.is_file():
        return None
    with torch.device("meta"):
        modules = dict(AutoModelForCausalLM.from_config(base_config).named_modules())
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            part = next((p for p in _LORA_PARTS if p in key), None)
            if part is None:
                continue
            name = key.split(part)[0].removeprefix(_PREFIX)
            module = modules.get(name)
            if module is None:
                return f"it adapts {name!r}, a layer the base model does not have"
            if not isinstance(module, torch.nn.Linear):
                continue
            shape = f.get_slice(key).get_shape()
            expected = module.in_features if part == ".lora_A" else module.out_features
            got = shape[1] if part == ".lora_A" else shape[0]
            if got != expected:
                return (f"its {name}{part} is {got} wide where the base's layer is {expected} "
                        f"({'input' if part == '.lora_A' else 'output'} width)")
    return None


def check_adapter_fits(adapter_dir: str | Path, base: str, base_config: PretrainedConfig, recorded: str) -> None:
    """A UserError, naming what does not fit, when the adapter cannot sit on ``base``."""
    why = adapter_misfit(adapter_dir, base_config)
    if why is not None:
        raise UserError(f"{adapter_dir}: this PEFT adapter does not fit the base model {base}: {why}. Its "
                        f"adapter_config.json records {recorded!r} as its base; pass that model (or a local copy "
                        "of it) as --base")
