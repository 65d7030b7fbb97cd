"""Load causal LMs and tokenizers from a local dir or a hub id: safetensors only, no remote code by default.

A dir that holds ``adapter_config.json`` is a PEFT adapter: its base is loaded first (from the path the
adapter records) and the adapter is applied on top. A built-in name (``smollm2-135m-instruct``) or a
``.gguf`` file is first resolved to its converted, cached model dir (:mod:`sftlab.models.builtin`).
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from sftlab.errors import UserError
from sftlab.models.builtin import resolve_model_source
from sftlab.offline import is_offline

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@contextlib.contextmanager
def peft_gc_probe_quiet() -> Iterator[None]:
    """Hide the one FutureWarning peft 0.21 triggers on every wrap with transformers 5.23.

    ``PeftModel.__init__`` reads ``model.is_gradient_checkpointing``, a property transformers 5 deprecated
    in favour of ``is_activation_checkpointing``; the warning is about peft's code, not ours or the user's.
    Scoped to the wrap call and to that one message.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def is_adapter_dir(path: str | Path) -> bool:
    """True when ``path`` is a PEFT adapter dir rather than a full model dir."""
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base_path(adapter_dir: str | Path) -> str:
    """The base model an adapter was trained on, as recorded in its ``adapter_config.json``."""
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise UserError(f"{adapter_dir}: adapter_config.json names no base_model_name_or_path")
    return base


def _check_source(name_or_path: str, tokenizer_only: bool = False) -> None:
    """Fail fast, with advice, when ``name_or_path`` is neither a model dir nor a reachable hub id.

    ``tokenizer_only`` also accepts a dir that holds just a tokenizer (``tokenizer_config.json``).
    """
    path = Path(name_or_path)
    if path.exists():
        tokenizer_dir = tokenizer_only and (path / "tokenizer_config.json").is_file()
        if not path.is_dir() or not (path / "config.json").is_file() and not is_adapter_dir(path) and not tokenizer_dir:
            raise UserError(
                f"{name_or_path} is not a model dir: expected config.json (a full model) or "
                "adapter_config.json (a PEFT adapter) inside it"
                + (", or tokenizer_config.json (a tokenizer)" if tokenizer_only else "")
            )
        return
    if name_or_path.startswith((".", "/", "~")) or not _HUB_ID.match(name_or_path):
        raise UserError(f"model path not found: {name_or_path}")
    if is_offline():
        raise UserError(
            f"{name_or_path!r} is not a local dir and the hub is off (offline mode); "
            "pass the path of a local model dir instead"
        )


def _hub_error(name_or_path: str, exc: Exception) -> UserError:
    return UserError(
        f"could not load {name_or_path!r} from the hub ({type(exc).__name__}: {exc}). "
        "If there is no network here, pass the path of a local model dir instead."
    )


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer of a model dir, tokenizer dir, adapter dir (its base's), built-in name, .gguf file or hub
    id; a pad token is ensured."""
    name_or_path = resolve_model_source(name_or_path)
    _check_source(name_or_path, tokenizer_only=True)
    source = name_or_path
    if is_adapter_dir(name_or_path) and not (Path(name_or_path) / "tokenizer_config.json").is_file():
        source = adapter_base_path(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if Path(source).exists():
            raise UserError(f"{source}: could not load its tokenizer ({type(exc).__name__}: {exc})") from None
        raise _hub_error(source, exc) from None
    if tok.pad_token is None:
        # Reusing EOS for padding is safe because every pad position is masked (labels -100).
        tok.pad_token = tok.eos_token
    return tok


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """``auto`` means bf16 on a GPU that supports it, fp32 otherwise (CPU-sane)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise UserError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None


def dropout_overrides(config: PretrainedConfig, p: float) -> dict[str, float]:
    """Config keys that set a dropout rate (``*dropout``, ``*pdrop``), each mapped to ``p``.

    Architectures name their rates differently (GPT-2: ``resid_pdrop``/``embd_pdrop``/``attn_pdrop``;
    Llama: ``attention_dropout``), so the keys are found by name. Unset (None) rates are left alone.
    """
    return {
        key: p
        for key, value in config.to_dict().items()
        if key.endswith(("dropout", "pdrop")) and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def load_model(
    name_or_path: str,
    dtype: str | torch.dtype | None = "auto",
    device: str = "cpu",
    trust_remote_code: bool = False,
    merge_adapter: bool = False,
    dropout: float | None = None,
) -> PreTrainedModel:
    """Load a causal LM (or base + PEFT adapter) from safetensors weights, in eval mode on ``device``.

    ``merge_adapter`` folds an adapter into the base weights and returns a plain transformers model.
    ``dropout`` overrides every dropout rate of the (base) model's config before the model is built.
    ``name_or_path`` may also be a built-in name or a ``.gguf`` file (converted once, then cached).
    """
    name_or_path = resolve_model_source(name_or_path)
    _check_source(name_or_path)
    torch_dtype = resolve_dtype(dtype, device)
    adapter = is_adapter_dir(name_or_path)
    base_source = resolve_model_source(adapter_base_path(name_or_path)) if adapter else name_or_path
    if adapter:
        _check_source(base_source)
    try:
        config = AutoConfig.from_pretrained(base_source, trust_remote_code=trust_remote_code)
        overrides = dropout_overrides(config, dropout) if dropout is not None else {}
        model = AutoModelForCausalLM.from_pretrained(
            base_source, dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=True, **overrides
        )
    except (OSError, ValueError) as exc:
        if Path(base_source).exists():
            raise UserError(f"{base_source}: could not load the model ({type(exc).__name__}: {exc})") from None
        raise _hub_error(base_source, exc) from None
    if adapter:
        from peft import PeftModel

        with peft_gc_probe_quiet():
            model = PeftModel.from_pretrained(model, name_or_path)
        if merge_adapter:
            model = model.merge_and_unload()
    return model.to(device).eval()
