"""NEFTune: noisy input embeddings during fine-tuning (Jain et al. 2023, arXiv:2310.05914).

In training mode, the input-embedding output of every real token gets

    emb + s * eps,   s = alpha_t / sqrt(L * d)

where d is the embedding width, L the length in real tokens of the sequence the token belongs to, and
eps is drawn elementwise from one of three distributions, scaled so that each has the per-element
variance of the paper's uniform noise, s^2 / 3:

    uniform    eps ~ U(-1, 1)                          Var = 1/3        (the paper's)
    gaussian   eps ~ N(0, 1) / sqrt(3)                 Var = 1/3
    laplace    eps ~ Laplace(0, b), b = 1 / sqrt(6)    Var = 2 b^2 = 1/3

so one ``alpha`` means the same noise energy for every type; only the tails differ (the kurtosis
E[eps^4] / Var^2 is 1.8, 3 and 6). Padding gets no noise. The NEFTune paper names the other noise
types as variants worth trying; the scaling that makes them comparable is ours.

This follows the official code (github.com/neelsjain/NEFTune), which takes L per example as
``attention_mask.sum(1)`` and multiplies the noise by the mask. transformers' built-in hook
(``transformers.integrations.neftune``) instead uses the padded batch length and noises padding, and
under packing treats a whole packed row as one sequence (transformers issue 34659). Here, when the batch
carries ``position_ids`` that restart per document (packing), each document is its own sequence: a new
document starts wherever a position id is not the previous one plus one. A packed batch has no
attention mask; given ``pad_token_id``, the padding tail the collator appends to a row (its last,
all-pad document) is recognised and left clean too.

**Layers.** ``layers`` picks the hidden states that get noise, numbered as transformers numbers
``output_hidden_states``: 0 is the input-embedding output (the paper's, and the default), k >= 1 the
output of decoder block k (before any final norm). Each gets the same rule, with d that state's width:
per-document L, padding clean. Noise deeper in the network is the other variant the NEFTune write-ups
suggest; hidden states are usually larger than embeddings, so the alpha that suits them differs.

``alpha_t`` follows ``schedule``: ``constant`` keeps alpha; ``linear_decay`` is alpha * (1 - progress),
where progress in [0, 1] is the fraction of training done, set by the trainer (see
:class:`NEFTuneProgressCallback`). Decaying the noise towards the end of training is the "adaptive"
variant the NEFTune write-ups suggest: strong regularisation early, a clean fit at the end.

The hooks sit on the base model's modules (``get_input_embeddings()`` and the decoder blocks,
unwrapping a PEFT model), so they work the same for full fine-tuning and for PEFT adapters. A forward
pre-hook on the top model (:class:`ForwardInputs`) records each call's ``input_ids``,
``attention_mask`` and ``position_ids``, which the inner hooks then read.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

NoiseType = Literal["uniform", "gaussian", "laplace"]
Schedule = Literal["constant", "linear_decay"]
NOISE_TYPES = ("uniform", "gaussian", "laplace")


def document_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] True where a document starts: t = 0, and wherever ``position_ids[t] != position_ids[t-1] + 1``."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts


def packed_padding(input_ids: torch.Tensor, position_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """[B, T] True on the padding tail of packed rows: a row's last document (from the last restart of
    ``position_ids``) when every one of its tokens is ``pad_token_id``.

    The packing collator (``sftlab.data.packing.SFTCollator``) pads a packed row as one more document
    (positions from 0, labels -100) and sends no attention mask. A real document is never all pad
    tokens, even when the pad token is the EOS token.
    """
    length = input_ids.size(1)
    starts = document_starts(position_ids.to(input_ids.device).expand_as(input_ids))
    index = torch.arange(length, device=input_ids.device)
    last_start = torch.where(starts, index, 0).amax(dim=1, keepdim=True)
    tail = index >= last_start
    all_pad = ((input_ids == pad_token_id) | ~tail).all(dim=1, keepdim=True)
    return tail & all_pad


def document_ids(real: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T] long: the id of the sequence (or packed document) each position belongs to, unique across
    the batch and below B * T. Without ``position_ids`` each row is one sequence; with them a new
    document starts wherever :func:`document_starts` says."""
    batch, length = real.shape
    if position_ids is None:
        return torch.arange(batch, device=real.device).unsqueeze(1).expand(batch, length)
    starts = document_starts(position_ids.to(real.device).expand(batch, length))
    # The cumulative count of starts, row-major: every row starts a document, so ids never cross rows.
    return (torch.cumsum(starts.flatten(), dim=0) - 1).view(batch, length)


def per_document_sum(values: torch.Tensor, doc_id: torch.Tensor) -> torch.Tensor:
    """For every position, the sum of ``values`` [B, T] over its document (``doc_id`` from
    :func:`document_ids`). Sized by B * T, the most documents there can be, so that no id is read back
    to the host (a GPU sync)."""
    sums = torch.zeros(values.numel(), device=values.device, dtype=values.dtype)
    sums.index_add_(0, doc_id.flatten(), values.flatten())
    return sums[doc_id.flatten()].view_as(values)


def sequence_lengths(
    real: torch.Tensor, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """For every position, the real-token length of the sequence (or packed document) it belongs to.

    ``real`` is a [B, T] 0/1 mask of real (non-pad) tokens. Without ``position_ids`` each row is one
    sequence. With them, a new document starts at t = 0 and wherever ``position_ids[t] !=
    position_ids[t-1] + 1``, so packed rows (positions restarting per document) split into documents.
    Returns a [B, T] float tensor of lengths, 0 on padding.
    """
    real = real.to(torch.float32)
    return per_document_sum(real, document_ids(real, position_ids)) * real


def noise_sample(like: torch.Tensor, noise_type: NoiseType) -> torch.Tensor:
    """Elementwise noise shaped like ``like`` (float32), each type with variance 1/3: U(-1, 1),
    N(0, 1) / sqrt(3), Laplace(0, 1 / sqrt(6))."""
    if noise_type == "uniform":
        return torch.rand_like(like, dtype=torch.float32).mul_(2).sub_(1)
    if noise_type == "gaussian":
        return torch.randn_like(like, dtype=torch.float32).div_(math.sqrt(3.0))
    if noise_type == "laplace":
        # Inverse CDF: -b * sign(u) * log(1 - |u|) for u ~ U(-1, 1), with |u| kept below 1 (log 0).
        u = torch.rand_like(like, dtype=torch.float32).mul_(2).sub_(1).clamp_(min=torch.finfo(torch.float32).eps - 1)
        return torch.log1p(-u.abs()).mul_(-torch.sign(u) / math.sqrt(6.0))
    raise ValueError(f"unknown neftune_noise_type {noise_type!r}; choose one of {', '.join(NOISE_TYPES)}")


def neftune_noise(
    embeds: torch.Tensor,
    real: torch.Tensor,
    alpha: float,
    noise_type: NoiseType = "uniform",
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The noise tensor NEFTune adds to ``embeds`` [B, T, d]; zero where ``real`` [B, T] is 0.

    Per token: (alpha / sqrt(L * d)) * eps, eps from :func:`noise_sample` (variance 1/3 for every
    type), with L from :func:`sequence_lengths`.
    """
    d = embeds.size(-1)
    lengths = sequence_lengths(real, position_ids)
    # Padding has L = 0: clamp to keep the division finite, then the real-mask zeroes it.
    scale = alpha / torch.sqrt(lengths.clamp(min=1.0) * d) * (lengths > 0)
    return (noise_sample(embeds, noise_type) * scale.unsqueeze(-1)).to(embeds.dtype)


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a PEFT wrapper (or the model itself)."""
    from peft import PeftModel

    return model.base_model.model if isinstance(model, PeftModel) else model


def decoder_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks of a transformers causal LM (under PEFT too), in order: the first
    ``ModuleList`` with ``num_hidden_layers`` entries (``model.layers``, GPT-2's ``transformer.h``)."""
    base = base_model(model)
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    count = getattr(config, "num_hidden_layers", None)
    for module in base.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"found no list of {count} decoder blocks in {type(base).__name__}")


class ForwardInputs:
    """What the top model's forward was last called with, for hooks inside it that need the batch's
    masks: a forward pre-hook records ``input_ids``, ``attention_mask`` and ``position_ids``.

    Shared by NEFTune and adversarial training (``sftlab.train.adversarial``), which must find real
    tokens and packed documents the same way.
    """

    def __init__(self, model: torch.nn.Module, pad_token_id: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.attention_mask: torch.Tensor | None = None
        self.position_ids: torch.Tensor | None = None
        self.input_ids: torch.Tensor | None = None
        self._handle = model.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """The forward pre-hook: keep this call's masks."""
        self.attention_mask = kwargs.get("attention_mask")
        self.position_ids = kwargs.get("position_ids")
        self.input_ids = kwargs.get("input_ids", args[0] if args else None)

    def remove(self) -> None:
        """Detach the pre-hook and forget the last call."""
        self._handle.remove()
        self.attention_mask = self.position_ids = self.input_ids = None

    def real_mask(self, batch: int, length: int, device: torch.device) -> torch.Tensor:
        """The [B, T] 0/1 float mask of real tokens for a hidden state of shape [B, T, ...]: the
        attention mask; for a packed batch (no mask) all but the padding tail (:func:`packed_padding`);
        otherwise all ones (no padding). A state longer than the input (prompt tuning prepends virtual
        tokens after the embedding) is aligned from the right, its extra leading positions not real."""
        mask = self._input_mask(device)
        if mask is None:
            return torch.ones(batch, length, device=device)
        mask = mask.float()
        if mask.shape[0] != batch or mask.shape[1] > length:
            return torch.ones(batch, length, device=device)
        return torch.nn.functional.pad(mask, (length - mask.shape[1], 0))

    def positions(self, length: int) -> torch.Tensor | None:
        """The recorded ``position_ids`` if they line up with a state of ``length`` positions, else None
        (each row then counts as one sequence)."""
        pos = self.position_ids
        return pos if pos is not None and pos.shape[-1] == length else None

    def _input_mask(self, device: torch.device) -> torch.Tensor | None:
        mask, ids, pos = self.attention_mask, self.input_ids, self.position_ids
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            return mask.to(device)
        if (
            self.pad_token_id is not None
            and isinstance(ids, torch.Tensor)
            and ids.dim() == 2
            and pos is not None
            and pos.shape[-1] == ids.shape[-1]
        ):
            return ~packed_padding(ids.to(device), pos, self.pad_token_id)
        return None


class NEFTuneHook:
    """NEFTune attached to one model: records each forward's masks and noises the chosen hidden states.

    Create it with :func:`attach_neftune`; call :meth:`set_progress` as training advances (for
    ``linear_decay``) and :meth:`remove` to detach it.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        alpha: float,
        noise_type: NoiseType,
        schedule: Schedule,
        pad_token_id: int | None = None,
        layers: tuple[int, ...] = (0,),
    ) -> None:
        if alpha <= 0:
            raise ValueError(f"neftune_noise_alpha must be > 0, got {alpha}")
        if noise_type not in NOISE_TYPES:
            raise ValueError(f"unknown neftune_noise_type {noise_type!r}; choose one of {', '.join(NOISE_TYPES)}")
        if schedule not in ("constant", "linear_decay"):
            raise ValueError(f"unknown neftune_schedule {schedule!r}; choose constant or linear_decay")
        if not layers:
            raise ValueError("neftune_layers is empty: name at least one hidden state (0 = the embeddings)")
        self.alpha = alpha
        self.noise_type: NoiseType = noise_type
        self.schedule: Schedule = schedule
        self.progress = 0.0
        self.noised_forwards = 0  # hidden states that got noise, so logs can show the hook really fired
        self.inputs = ForwardInputs(model, pad_token_id)
        self.modules = [self._layer(model, k) for k in sorted(set(layers))]
        self._handles = [module.register_forward_hook(self._add_noise) for module in self.modules]

    @staticmethod
    def _layer(model: torch.nn.Module, index: int) -> torch.nn.Module:
        """The module whose output is hidden state ``index``: the input embedding (0) or block ``index``."""
        if index == 0:
            return base_model(model).get_input_embeddings()
        blocks = decoder_blocks(model)
        if not 1 <= index <= len(blocks):
            raise ValueError(f"neftune_layers: {index} is out of range; this model has hidden states 0..{len(blocks)}")
        return blocks[index - 1]

    @property
    def current_alpha(self) -> float:
        """alpha after the schedule: alpha, or alpha * (1 - progress) for linear_decay."""
        if self.schedule == "linear_decay":
            return self.alpha * (1.0 - self.progress)
        return self.alpha

    def log_values(self) -> dict[str, float]:
        """What to log: the alpha in effect, and how many hidden states this process has noised."""
        return {"neftune/alpha": self.current_alpha, "neftune/noised_forwards": float(self.noised_forwards)}

    def set_progress(self, fraction_done: float) -> None:
        """Tell the schedule how far training is, as a fraction in [0, 1]."""
        self.progress = min(max(float(fraction_done), 0.0), 1.0)

    def remove(self) -> None:
        """Detach every hook; the model is as it was."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.inputs.remove()

    def _add_noise(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        # Decoder blocks of some architectures return (hidden, extras...): noise the hidden state only.
        hidden = output[0] if isinstance(output, tuple) else output
        alpha = self.current_alpha
        if not module.training or alpha == 0.0 or not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
            return output
        batch, length, _ = hidden.shape
        real = self.inputs.real_mask(batch, length, hidden.device)
        self.noised_forwards += 1
        noisy = hidden + neftune_noise(hidden, real, alpha, self.noise_type, self.inputs.positions(length))
        return (noisy, *output[1:]) if isinstance(output, tuple) else noisy


def attach_neftune(
    model: torch.nn.Module,
    alpha: float,
    noise_type: NoiseType = "uniform",
    schedule: Schedule = "constant",
    pad_token_id: int | None = None,
    layers: tuple[int, ...] = (0,),
) -> NEFTuneHook:
    """Attach NEFTune to ``model`` (a transformers or PEFT model); returns the hook object.

    ``model`` must be the module the trainer calls (its forward receives ``attention_mask`` and
    ``position_ids``), not an inner one. ``pad_token_id`` lets it find the padding tail of packed
    rows, which carry no attention mask. ``layers`` are the hidden states to noise (0: the input
    embeddings; k: the output of block k). Don't also set transformers' own ``neftune_noise_alpha``.
    """
    return NEFTuneHook(model, alpha, noise_type, schedule, pad_token_id, tuple(layers))


class NEFTuneProgressCallback(TrainerCallback):
    """Feeds the trainer's progress (global_step / max_steps) to a :class:`NEFTuneHook`."""

    def __init__(self, hook: NEFTuneHook) -> None:
        self.hook = hook

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.max_steps > 0:
            self.hook.set_progress(state.global_step / state.max_steps)
