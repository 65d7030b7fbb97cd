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
from typing import Any

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


# Weight files that are pickles: torch.load runs code a file names, so sftlab loads them only when the user
# says the files are theirs (``allow_pickle``), and then with ``weights_only=True`` (transformers and peft do).
PICKLED_WEIGHTS = ("adapter_model.bin", "pytorch_model.bin", "pytorch_model.bin.index.json")
SAFE_WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")


def refuse_pickled_weights(path: str | Path, allow_pickle: bool) -> None:
    """A UserError when the dir ``path`` holds its weights only as a pickle and ``allow_pickle`` is off."""
    p = Path(path)
    if allow_pickle or not p.is_dir() or any((p / name).is_file() for name in SAFE_WEIGHTS):
        return
    pickled = next((name for name in PICKLED_WEIGHTS if (p / name).is_file()), None)
    if pickled:
        raise UserError(
            f"{p} holds its weights as a pickle ({pickled}), and unpickling a file can run code in it, so sftlab "
            "loads safetensors only. Save the weights as safetensors (save_pretrained writes them by default), or, "
            "if you made this file yourself, set allow_pickle: true in the config (train, audit) or pass "
            "--allow-pickle (merge, interpolate, data distill); it is then read by torch.load with weights_only=True"
        )


def read_adapter_config(adapter_dir: str | Path) -> dict[str, Any]:
    """An adapter dir's ``adapter_config.json`` as a mapping; a UserError when it is not one."""
    path = Path(adapter_dir) / "adapter_config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); the adapter dir is damaged: save the adapter again") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def adapter_base_path(adapter_dir: str | Path) -> str:
    """The base model an adapter was trained on, as recorded in its ``adapter_config.json``; a recorded
    local path that no longer exists is a UserError."""
    base = read_adapter_config(adapter_dir).get("base_model_name_or_path")
    if not base or not isinstance(base, str):
        raise UserError(f"{adapter_dir}: adapter_config.json names no base_model_name_or_path")
    if base.startswith((".", "/", "~")) and not Path(base).expanduser().exists():
        raise UserError(f"{adapter_dir}: the base model it was trained on, {base} (base_model_name_or_path in its "
                        "adapter_config.json), is not found; put the base back there, or set that field to "
                        "where it is now")
    return base


# PEFT method names that ``merge_and_unload`` can fold into the base weights (DoRA is a LoRA option). The
# others sftlab trains (prompt and prefix tuning) add virtual tokens instead.
MERGEABLE = {"LORA", "IA3"}


def adapter_peft_type(adapter_dir: str | Path) -> str:
    """The ``peft_type`` an adapter dir's ``adapter_config.json`` records ("?" when it names none)."""
    return read_adapter_config(adapter_dir).get("peft_type", "?")


def adapter_is_mergeable(adapter_dir: str | Path) -> bool:
    """True when the adapter changes weights and so folds into them (:data:`MERGEABLE`)."""
    return adapter_peft_type(adapter_dir) in MERGEABLE


def context_limit(model: PreTrainedModel, max_length: int) -> int:
    """``max_length``, capped at the model's position limit (a tiny model may know only 128 positions)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    return min(max_length, limit) if isinstance(limit, int) and limit > 0 else max_length


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


def _sources(name_or_path: str, base: str | None = None) -> tuple[str, str | None]:
    """What the loaders read: the model's own source (a built-in name or ``.gguf`` file becomes its converted
    dir) and, for an adapter dir, its base's source: ``base`` when given, else the one the adapter records (it
    may name its base by a built-in name)."""
    source = resolve_model_source(name_or_path)
    return source, resolve_model_source(base or adapter_base_path(source)) if is_adapter_dir(source) else None


def _hub_error(name_or_path: str, exc: Exception) -> UserError:
    return UserError(
        f"could not load {name_or_path!r} from the hub ({type(exc).__name__}: {exc}). "
        "If there is no network here, pass the path of a local model dir instead."
    )


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, base: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of a model dir, tokenizer dir, adapter dir (its own, else its base's: ``base`` when given,
    else the one its adapter_config.json records), built-in name, .gguf file or hub id; a pad token is ensured."""
    name_or_path, base_source = _sources(name_or_path, base)
    _check_source(name_or_path, tokenizer_only=True)
    source = name_or_path
    if base_source is not None and not (Path(name_or_path) / "tokenizer_config.json").is_file():
        source = base_source
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


# Narrowest model (hidden size) for which ``dtype: auto`` picks bf16 autocast on a CPU with bf16 units.
# Measured with bench/bf16_threshold.py (one training step, 8 x 96 tokens, fp32 time / bf16 time, torch
# 2.13; docs/benchmarks.md). On a Xeon with AMX, 1 thread: width 64 0.79x (bf16 slower: casts and AMX tile
# set-up outweigh the tiny matmuls), width 128 1.01x (no gain), width 288 1.40x, width 576 (4 layers) 1.63x;
# SmolLM2-135M through `sftlab train` 1.76x (bench/bf16_agreement.py). On an AMD EPYC with AVX512-BF16 and
# no AMX, 2 threads: 1.67x at width 64 already, 2.0-2.1x from 128 up, SmolLM2 2.1x. The threshold stays where
# AMX needs it on both, so that the tiny models (the tests, the synthetic world) train alike everywhere.
CPU_BF16_MIN_WIDTH = 256


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware, as torch detects it: AMX bf16 tiles (Intel Sapphire
    Rapids and later) or AVX512-BF16 dot products (Intel Cooper Lake, AMD Zen 4 and later). Elsewhere
    bf16 matmuls are emulated and slower than fp32."""
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("amx_bf16", False) or capabilities.get("avx512_bf16", False))


def model_width(config: PretrainedConfig | None) -> int | None:
    """The model's hidden size (``hidden_size``; GPT-2 maps it to ``n_embd``), or None when unknown."""
    width = getattr(config, "hidden_size", None) if config is not None else None
    return width if isinstance(width, int) else None


def resolve_dtype(dtype: str | torch.dtype | None, device: str, config: PretrainedConfig | None = None) -> torch.dtype:
    """The compute dtype ``dtype`` names; ``auto`` is bf16 where bf16 pays, fp32 elsewhere.

    bf16 pays on a CUDA GPU that supports it, and on a CPU with bf16 units (:func:`cpu_has_native_bf16`)
    for a model at least :data:`CPU_BF16_MIN_WIDTH` wide (``config``'s hidden size); narrower models,
    models of unknown width, and CPUs without bf16 units (where bf16 matmuls are emulated and slower than
    fp32) get fp32.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        width = model_width(config)
        if device == "cpu" and cpu_has_native_bf16() and width is not None and width >= CPU_BF16_MIN_WIDTH:
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise UserError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None


# Longest rows for which training under CPU bf16 autocast uses eager attention instead of SDPA. SDPA's CPU
# flash kernel is slow in bf16 on short rows; fwd+bwd of one SmolLM2 attention layer (9 query / 3 KV heads of
# 64, 1 thread, loaded machine; docs/benchmarks.md), SDPA vs eager: 96 tokens x 8 rows 84-126 ms vs 26 ms,
# 128 x 6 109-118 vs 75, 192 x 3 61-65 vs 56, 256 x 4 100-123 vs 116, 512 x 2 107-135 vs 180. In fp32 SDPA
# is the faster one at every length tried (96 x 8: 29 ms vs 41).
CPU_BF16_EAGER_MAX_LENGTH = 192


def training_attention(precision: str, device: str, max_length: int) -> str | None:
    """The attention implementation to train with: ``eager`` under bf16 autocast on a CPU for rows of at most
    :data:`CPU_BF16_EAGER_MAX_LENGTH` tokens, else None (transformers' default, SDPA)."""
    if precision == "bf16" and device == "cpu" and max_length <= CPU_BF16_EAGER_MAX_LENGTH:
        return "eager"
    return None


def weights_and_autocast(compute: torch.dtype, device: str) -> tuple[torch.dtype, torch.dtype | None]:
    """How to run inference in ``compute``: (dtype to load the weights in, autocast dtype or None).

    On a CPU the weights stay fp32 and matmuls run under ``torch.autocast`` in ``compute``: norms,
    softmax and the residual stream keep fp32, which a model cast whole to bf16 would lose, and the bf16
    units run the matmuls at the bf16 rate either way. On a GPU a half-precision model is loaded in that
    dtype (half the memory, the usual practice there).
    """
    if compute == torch.float32:
        return torch.float32, None
    if device == "cpu":
        return torch.float32, compute
    return compute, None


def autocast(dtype: torch.dtype | None, device: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` in ``dtype`` on ``device``'s type; a no-op for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def load_config(name_or_path: str, trust_remote_code: bool = False, base: str | None = None) -> PretrainedConfig:
    """The model config of a model dir, built-in name, .gguf file or hub id; an adapter dir gives its base's
    (``base`` when given, else the one it records)."""
    name_or_path, base_source = _sources(name_or_path, base)
    _check_source(name_or_path)
    source = base_source or name_or_path
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if Path(source).exists():
            raise UserError(f"{source}: could not read its config ({type(exc).__name__}: {exc})") from None
        raise _hub_error(source, exc) from None


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


def adapter_mismatch(adapter_dir: str, base: str, exc: Exception) -> UserError:
    """The UserError for an adapter PEFT could not put on ``base`` (other architecture, other shapes)."""
    detail = " ".join(str(exc).split())
    detail = detail if len(detail) <= 300 else detail[:300] + "..."
    return UserError(f"{adapter_dir}: this PEFT adapter does not fit the base model {base} ({type(exc).__name__}: "
                     f"{detail}). Its adapter_config.json records {adapter_base_path(adapter_dir)!r} as its base; "
                     "pass that model (or a local copy of it) as the base")


def load_model(
    name_or_path: str,
    dtype: str | torch.dtype | None = "auto",
    device: str = "cpu",
    trust_remote_code: bool = False,
    merge_adapter: bool = False,
    dropout: float | None = None,
    attn_implementation: str | None = None,
    allow_pickle: bool = False,
    base: str | None = None,
) -> PreTrainedModel:
    """Load a causal LM (or base + PEFT adapter) from safetensors weights, in eval mode on ``device``.

    ``merge_adapter`` folds an adapter into the base weights and returns a plain transformers model.
    ``dropout`` overrides every dropout rate of the (base) model's config before the model is built;
    ``attn_implementation`` picks the attention kernel (None: transformers' default).
    ``name_or_path`` may also be a built-in name or a ``.gguf`` file (converted once, then cached).
    ``dtype: auto`` loads bf16 weights on a GPU that has bf16 and fp32 weights elsewhere.
    ``allow_pickle`` lets a dir whose weights are only ``*.bin`` pickles load (see :func:`refuse_pickled_weights`).
    ``base`` puts an adapter on that model instead of the one its ``adapter_config.json`` records (which is often
    a hub id, unreachable offline); an adapter that does not fit it is a UserError.
    """
    name_or_path, adapter_base = _sources(name_or_path, base)
    _check_source(name_or_path)
    refuse_pickled_weights(name_or_path, allow_pickle)
    adapter = adapter_base is not None
    base_source = adapter_base or name_or_path
    if adapter:
        _check_source(base_source)
        refuse_pickled_weights(base_source, allow_pickle)
    try:
        config = AutoConfig.from_pretrained(base_source, trust_remote_code=trust_remote_code)
        overrides: dict[str, Any] = dropout_overrides(config, dropout) if dropout is not None else {}
        # Without the config, ``auto`` on a CPU keeps fp32 weights: bf16 pays there under autocast, which the
        # caller sets up around its own compute (weights_and_autocast), not as bf16 weights.
        torch_dtype = resolve_dtype(dtype, device)
        if attn_implementation is not None:
            overrides["attn_implementation"] = attn_implementation
        model = AutoModelForCausalLM.from_pretrained(
            base_source, dtype=torch_dtype, trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True, **overrides
        )
    except (OSError, ValueError) as exc:
        if Path(base_source).exists():
            raise UserError(f"{base_source}: could not load the model ({type(exc).__name__}: {exc})") from None
        raise _hub_error(base_source, exc) from None
    if adapter:
        from peft import PeftModel

        try:
            with peft_gc_probe_quiet():
                model = PeftModel.from_pretrained(model, name_or_path)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise adapter_mismatch(name_or_path, base_source, exc) from None
        if merge_adapter:
            model = model.merge_and_unload()
    return model.to(device).eval()
