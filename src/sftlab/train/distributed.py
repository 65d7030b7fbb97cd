"""Scaling out: the engine a run trains under (DDP, FSDP2, DeepSpeed ZeRO) and the shard arithmetic
the regularizers need under it.

Engines. Every engine goes through transformers.Trainer and accelerate; sftlab only maps its own
``fsdp:`` / ``deepspeed:`` config keys onto ``TrainingArguments`` (:func:`engine_arguments`). DDP needs
no key: a ``torchrun`` launch is enough.

Shards. Under FSDP2 (``torch.distributed.fsdp.fully_shard``) each parameter becomes a DTensor whose
local tensor is this rank's slice (a ``Shard(0)`` placement: rows split as ``torch.chunk`` splits
them). State a remedy keeps per parameter (L2-SP's and EWC's anchor theta_0, EWC's Fisher, a frozen
KL base) must be laid out the same way, or it would compare full tensors with slices and keep a
full copy on every rank. The helpers here take a full tensor to the slice a parameter holds
(:func:`shard_like`), sum a per-shard quantity over the ranks while keeping the gradient local
(:func:`sum_over_shards`), and shard a frozen module as accelerate sharded the model
(:func:`shard_module_like`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.distributed as dist
from pydantic import Field, model_validator
from torch.distributed.tensor import DTensor, distribute_tensor

from sftlab.errors import UserError
from sftlab.settings import StrictModel

if TYPE_CHECKING:
    from accelerate import Accelerator

    from sftlab.config import TrainConfig


# --------------------------------------------------------------------------------------------------
# Config -> TrainingArguments


def world_size() -> int:
    """The number of processes of this launch (torchrun / accelerate set ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class FsdpSettings(StrictModel):
    """PyTorch FSDP2 (``fully_shard``) through accelerate: parameters, gradients and optimizer state
    sharded over the ranks of a ``torchrun`` / ``accelerate launch`` run. Names follow
    ``TrainingArguments.fsdp_config``."""

    version: Literal[2] = Field(2, description="FSDP2 only; FSDP1 is deprecated in transformers")
    reshard_after_forward: bool = Field(
        True, description="free each block's gathered weights after its forward (like ZeRO-3)"
    )
    transformer_layer_cls_to_wrap: list[str] | None = Field(
        None, description="block classes sharded as units; None = the model's own _no_split_modules"
    )
    state_dict_type: Literal["FULL_STATE_DICT", "SHARDED_STATE_DICT"] = Field(
        "FULL_STATE_DICT", description="checkpoint layout; the final model dir is always a full one"
    )
    cpu_offload: bool = False
    activation_checkpointing: bool = False


class DeepSpeedSettings(StrictModel):
    """DeepSpeed ZeRO through accelerate (``TrainingArguments.deepspeed``). Untested here: deepspeed
    does not run on a CPU-only machine (docs/scaling.md)."""

    stage: Literal[2, 3] = 2
    offload_optimizer: bool = False
    offload_param: bool = Field(False, description="ZeRO-3 only")
    config_file: str | None = Field(None, description="a DeepSpeed JSON of your own, used as it is")

    @model_validator(mode="after")
    def _offload_param_needs_stage_3(self) -> DeepSpeedSettings:
        if self.offload_param and self.stage != 3:
            raise ValueError("deepspeed.offload_param needs stage: 3 (ZeRO-2 keeps every parameter on each rank)")
        return self


def fsdp_config(settings: FsdpSettings) -> dict[str, Any]:
    """``TrainingArguments.fsdp_config`` for FSDP2 (transformers turns it into accelerate's plugin)."""
    config: dict[str, Any] = {
        "version": settings.version,
        "reshard_after_forward": settings.reshard_after_forward,
        "state_dict_type": settings.state_dict_type,
        "cpu_offload": settings.cpu_offload,
        "activation_checkpointing": settings.activation_checkpointing,
        # Transformer blocks are the sharding units (accelerate's transformer-based wrap policy).
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    }
    if settings.transformer_layer_cls_to_wrap:
        config["transformer_layer_cls_to_wrap"] = list(settings.transformer_layer_cls_to_wrap)
    return config


def deepspeed_config(settings: DeepSpeedSettings) -> dict[str, Any]:
    """A DeepSpeed config for ZeRO-``stage``; ``"auto"`` values are filled in by transformers from
    TrainingArguments (batch size, accumulation, clipping, precision, optimizer, scheduler), so the two
    never disagree."""
    zero: dict[str, Any] = {
        "stage": settings.stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if settings.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if settings.stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
                # The final model dir must be a plain transformers one: gather the weights on save.
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
        if settings.offload_param:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "zero_optimization": zero,
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
    }


def check_engine(cfg: "TrainConfig") -> None:
    """Refuse, with a UserError, engine settings that cannot run: FSDP in a single process, DeepSpeed
    without the package, and ZeRO-3 with a remedy that needs every weight on every rank between steps."""
    if cfg.fsdp is not None and world_size() < 2:
        raise UserError(
            "fsdp: shards the model over several processes; launch with `torchrun --nproc_per_node N -m "
            "sftlab.cli train ...` (or accelerate launch), or drop the fsdp section for one process"
        )
    if cfg.deepspeed is None:
        return
    if importlib.util.find_spec("deepspeed") is None:
        raise UserError("deepspeed: the deepspeed package is not installed (pip install deepspeed; it needs a GPU)")
    if cfg.deepspeed.config_file is not None and not os.path.isfile(cfg.deepspeed.config_file):
        raise UserError(f"deepspeed.config_file not found: {cfg.deepspeed.config_file}")
    if cfg.deepspeed.stage == 3:
        # ZeRO-3 partitions parameters into flat buffers that only exist whole inside forward and backward.
        needs_weights = [name for name in ("l2sp", "ewc") if getattr(cfg, name) is not None]
        if cfg.kl_to_base is not None and cfg.method == "full":
            needs_weights.append("kl_to_base (full fine-tuning: a frozen base copy)")
        if needs_weights:
            raise UserError(
                f"deepspeed stage 3 does not support {', '.join(needs_weights)}: use fsdp (which shards them "
                "with the model), deepspeed stage 2, or a LoRA method for kl_to_base"
            )


def engine_arguments(cfg: "TrainConfig") -> dict[str, Any]:
    """The TrainingArguments keys of the configured engine: ``fsdp``/``fsdp_config``, ``deepspeed``, or none."""
    check_engine(cfg)
    if cfg.fsdp is not None:
        return {"fsdp": True, "fsdp_config": fsdp_config(cfg.fsdp)}
    if cfg.deepspeed is not None:
        return {"deepspeed": cfg.deepspeed.config_file or deepspeed_config(cfg.deepspeed)}
    return {}


# --------------------------------------------------------------------------------------------------
# Shards


def is_sharded(tensor: torch.Tensor) -> bool:
    """True for a DTensor (an FSDP2 parameter): its data on this rank is ``tensor.to_local()``."""
    return isinstance(tensor, DTensor)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``tensor``: its local shard if it is a DTensor, else itself (differentiable)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def shard_like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The slice of ``full`` (a tensor of ``param``'s global shape) that ``param`` holds on this rank,
    on its device and in its dtype; ``full`` itself, moved there, when ``param`` is not sharded.

    Every rank holds the same ``full``, so the slice is cut locally (``src_data_rank=None``: no
    communication).
    """
    full = full.detach().to(device=local(param).device, dtype=param.dtype)
    if not isinstance(param, DTensor):
        return full
    if tuple(full.shape) != tuple(param.shape):
        raise ValueError(f"cannot shard a {tuple(full.shape)} tensor like a {tuple(param.shape)} parameter")
    shard = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None).to_local()
    # A copy, so the full tensor can be freed; contiguous, for the foreach kernels.
    return shard.clone(memory_format=torch.contiguous_format)


def sum_over_shards(value: torch.Tensor, params: Iterable[torch.Tensor]) -> torch.Tensor:
    """``value`` summed over the ranks that shard ``params``; its gradient stays this rank's own.

    A weight penalty sum_i f(theta_i) over sharded parameters is the sum of each rank's sum over its
    own shard. Each rank's gradient of the total with respect to its shard is the gradient of its own
    part, and FSDP2 adds a gradient that autograd puts on a sharded parameter to the reduce-scattered
    one without averaging it. So the total's value (for the loss that is logged, and to match a
    single process) comes from an all-reduce of the detached parts, and the gradient from the local
    part alone: ``local + (all_reduce(local) - local).detach()``.
    """
    sharded = next((p for p in params if isinstance(p, DTensor)), None)
    if sharded is None or not dist.is_initialized():
        return value
    total = value.detach().clone()
    mesh = sharded.device_mesh
    for dim, placement in enumerate(sharded.placements):
        if placement.is_shard():
            dist.all_reduce(total, group=mesh.get_group(dim))
    return value + (total - value.detach())


def count_over_ranks(count: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``count`` summed over every process of the run, and the number of processes ((count, 1) alone).

    A mean over the positions of the whole data-parallel batch is each rank's sum divided by the
    total count, times the number of ranks (DDP, FSDP and DeepSpeed average gradients over ranks).
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return count, 1
    total = count.detach().clone()
    dist.all_reduce(total)
    return total, dist.get_world_size()


def reshard(module: torch.nn.Module) -> None:
    """Free every gathered FSDP2 parameter of ``module``: its modules then hold their shards only.

    A group with ``reshard_after_forward`` off (accelerate's root and output head) keeps its gathered
    weights after a forward until a backward reshards them; a forward without backward (a frozen KL
    base, an evaluation) would otherwise leave them gathered.
    """
    from torch.distributed.fsdp import FSDPModule

    for sub in module.modules():
        if isinstance(sub, FSDPModule):
            sub.reshard()


def is_fsdp2(model: torch.nn.Module) -> bool:
    """True when ``model`` (or a submodule) was sharded by ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def enable_fsdp_on_cpu(accelerator: "Accelerator", plugin_args: dict[str, Any]) -> bool:
    """Switch a multi-process CPU accelerator to FSDP with ``plugin_args`` (TrainingArguments'
    ``fsdp_plugin_args``); returns whether FSDP is now on.

    accelerate's state selects FSDP for accelerator devices only (multi-GPU, XPU, NPU...) and leaves a
    gloo CPU run as plain DDP, while FSDP2 itself runs on CPU. Setting the state's distributed type
    and plugin, as accelerate's own selection would, makes ``prepare`` shard the model with
    ``fully_shard``, and checkpointing take its FSDP path.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = FullyShardedDataParallelPlugin(**plugin_args)
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    # As AcceleratorState.__init__ ends: every later AcceleratorState() copies PartialState's type over its own.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return True


@contextlib.contextmanager
def full_state_dict(accelerator: "Accelerator") -> Iterator[None]:
    """Inside, an FSDP run saves full state dicts, whatever its checkpoints use.

    The Trainer writes model weights on ``save_model`` only for ``FULL_STATE_DICT``; a run whose
    checkpoints are sharded (``SHARDED_STATE_DICT``, resumable) must still end in a plain model dir.
    """
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is None or "FULL_STATE_DICT" in str(plugin.state_dict_type):
        yield
        return
    saved = plugin.state_dict_type
    plugin.set_state_dict_type("FULL_STATE_DICT")
    try:
        yield
    finally:
        plugin.set_state_dict_type(saved)


def shard_module_like(module: torch.nn.Module, accelerator: "Accelerator") -> torch.nn.Module:
    """Shard a frozen ``module`` (a copy of the model) as accelerate sharded the model itself: the
    same plugin settings, wrap policy and mesh, through accelerate's own FSDP2 preparation."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    module = fsdp2_prepare_model(accelerator, module)
    reshard(module)
    return module


def local_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes this rank holds for ``tensors`` (local shards of DTensors), each distinct storage once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in tensors:
        data = local(tensor)
        key = (data.data_ptr(), data.numel()) if data.numel() else (id(data), 0)
        if key in seen:
            continue
        seen.add(key)
        total += data.numel() * data.element_size()
    return total


def per_rank(value: int) -> list[int]:
    """``value`` from every rank, in rank order (``[value]`` in a single process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return [int(v) for v in values]
