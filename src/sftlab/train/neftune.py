"""NEFTune: noisy input embeddings during fine-tuning (Jain et al. 2023, arXiv:2310.05914).

In training mode, the input-embedding output of every real token gets

    emb + (alpha_t / sqrt(L * d)) * eps,   eps ~ U(-1, 1) elementwise            (uniform, the paper's)
    emb + (alpha_t / sqrt(3 * L * d)) * eps, eps ~ N(0, 1) elementwise           (gaussian)

where d is the embedding width and L the length in real tokens of the sequence the token belongs to.
Padding gets no noise. The gaussian scale is chosen to give the same per-element variance as the
uniform one (Var U(-a, a) = a^2 / 3), so one ``alpha`` means the same noise energy for both types.

This follows the official code (github.com/neelsjain/NEFTune), which takes L per example as
``attention_mask.sum(1)`` and multiplies the noise by the mask. transformers' built-in hook
(``transformers.integrations.neftune``) instead uses the padded batch length and noises padding, and
under packing treats a whole packed row as one sequence (transformers issue 34659). Here, when the batch
carries ``position_ids`` that restart per document (packing), each document is its own sequence: a new
document starts wherever a position id is not the previous one plus one. A packed batch has no
attention mask; given ``pad_token_id``, the padding tail the collator appends to a row (its last,
all-pad document) is recognised and left clean too.

``alpha_t`` follows ``schedule``: ``constant`` keeps alpha; ``linear_decay`` is alpha * (1 - progress),
where progress in [0, 1] is the fraction of training done, set by the trainer (see
:class:`NEFTuneProgressCallback`). Decaying the noise towards the end of training is the "adaptive"
variant the NEFTune write-ups suggest: strong regularisation early, a clean fit at the end.

The hook sits on the base model's input embedding (``get_input_embeddings()``, unwrapping a PEFT model),
so it works the same for full fine-tuning and for PEFT adapters. A forward pre-hook on the top model
records each call's ``input_ids``, ``attention_mask`` and ``position_ids``, which the embedding hook
then reads.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

NoiseType = Literal["uniform", "gaussian"]
Schedule = Literal["constant", "linear_decay"]


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
    if position_ids is None:
        return real.sum(dim=1, keepdim=True) * real
    starts = document_starts(position_ids.to(real.device).expand_as(real))
    # Document ids, unique across the batch: the cumulative count of starts, row-major.
    doc_id = torch.cumsum(starts.flatten(), dim=0) - 1
    # At most B*T documents; sizing by that avoids reading doc_id back to the host (a GPU sync).
    lengths = torch.zeros(real.numel(), device=real.device, dtype=real.dtype)
    lengths.index_add_(0, doc_id, real.flatten())
    return lengths[doc_id].view_as(real) * real


def neftune_noise(
    embeds: torch.Tensor,
    real: torch.Tensor,
    alpha: float,
    noise_type: NoiseType = "uniform",
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The noise tensor NEFTune adds to ``embeds`` [B, T, d]; zero where ``real`` [B, T] is 0.

    Per token: (alpha / sqrt(L * d)) * U(-1, 1) (uniform) or (alpha / sqrt(3 L d)) * N(0, 1)
    (gaussian), with L from :func:`sequence_lengths`.
    """
    d = embeds.size(-1)
    lengths = sequence_lengths(real, position_ids)
    # Padding has L = 0: clamp to keep the division finite, then the real-mask zeroes it.
    scale = alpha / torch.sqrt(lengths.clamp(min=1.0) * d) * (lengths > 0)
    if noise_type == "uniform":
        eps = torch.rand_like(embeds, dtype=torch.float32).mul_(2).sub_(1)
    elif noise_type == "gaussian":
        eps = torch.randn_like(embeds, dtype=torch.float32).div_(math.sqrt(3.0))
    else:
        raise ValueError(f"unknown neftune_noise_type {noise_type!r}; choose uniform or gaussian")
    return (eps * scale.unsqueeze(-1)).to(embeds.dtype)


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a PEFT wrapper (or the model itself)."""
    from peft import PeftModel

    return model.base_model.model if isinstance(model, PeftModel) else model


class NEFTuneHook:
    """NEFTune attached to one model: records each forward's masks and noises the input embeddings.

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
    ) -> None:
        if alpha <= 0:
            raise ValueError(f"neftune_noise_alpha must be > 0, got {alpha}")
        if noise_type not in ("uniform", "gaussian"):
            raise ValueError(f"unknown neftune_noise_type {noise_type!r}; choose uniform or gaussian")
        if schedule not in ("constant", "linear_decay"):
            raise ValueError(f"unknown neftune_schedule {schedule!r}; choose constant or linear_decay")
        self.alpha = alpha
        self.noise_type: NoiseType = noise_type
        self.schedule: Schedule = schedule
        self.pad_token_id = pad_token_id
        self.progress = 0.0
        self.noised_forwards = 0  # embedding calls that got noise, so logs can show the hook really fired
        self._attention_mask: torch.Tensor | None = None
        self._position_ids: torch.Tensor | None = None
        self._input_ids: torch.Tensor | None = None
        self.embedding = _base_model(model).get_input_embeddings()
        self._handles = [
            model.register_forward_pre_hook(self._record, with_kwargs=True),
            self.embedding.register_forward_hook(self._add_noise),
        ]

    @property
    def current_alpha(self) -> float:
        """alpha after the schedule: alpha, or alpha * (1 - progress) for linear_decay."""
        if self.schedule == "linear_decay":
            return self.alpha * (1.0 - self.progress)
        return self.alpha

    def log_values(self) -> dict[str, float]:
        """What to log: the alpha in effect, and how many embedding forwards this process has noised."""
        return {"neftune/alpha": self.current_alpha, "neftune/noised_forwards": float(self.noised_forwards)}

    def set_progress(self, fraction_done: float) -> None:
        """Tell the schedule how far training is, as a fraction in [0, 1]."""
        self.progress = min(max(float(fraction_done), 0.0), 1.0)

    def remove(self) -> None:
        """Detach both hooks; the model is as it was."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._attention_mask = self._position_ids = self._input_ids = None

    def _record(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._attention_mask = kwargs.get("attention_mask")
        self._position_ids = kwargs.get("position_ids")
        self._input_ids = kwargs.get("input_ids", args[0] if args else None)

    def _real_mask(self, batch: int, length: int, device: torch.device) -> torch.Tensor:
        """The [B, T] real-token mask of the current call: the attention mask; for a packed batch (no
        mask) all but the padding tail (:func:`packed_padding`); otherwise all ones (no padding)."""
        mask = self._attention_mask
        if mask is not None and mask.dim() == 2 and tuple(mask.shape) == (batch, length):
            return mask.to(device)
        ids, pos = self._input_ids, self._position_ids
        if (
            self.pad_token_id is not None
            and isinstance(ids, torch.Tensor)
            and pos is not None
            and tuple(ids.shape) == (batch, length)
            and pos.shape[-1] == length
        ):
            return (~packed_padding(ids.to(device), pos, self.pad_token_id)).float()
        return torch.ones(batch, length, device=device)

    def _add_noise(self, module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        alpha = self.current_alpha
        if not module.training or alpha == 0.0 or output.dim() != 3:
            return output
        batch, length, _ = output.shape
        real = self._real_mask(batch, length, output.device)
        pos = self._position_ids
        if pos is not None and pos.shape[-1] != length:
            pos = None  # e.g. prompt tuning adds virtual tokens after the embedding: positions don't line up
        self.noised_forwards += 1
        return output + neftune_noise(output, real, alpha, self.noise_type, pos)


def attach_neftune(
    model: torch.nn.Module,
    alpha: float,
    noise_type: NoiseType = "uniform",
    schedule: Schedule = "constant",
    pad_token_id: int | None = None,
) -> NEFTuneHook:
    """Attach NEFTune to ``model`` (a transformers or PEFT model); returns the hook object.

    ``model`` must be the module the trainer calls (its forward receives ``attention_mask`` and
    ``position_ids``), not an inner one. ``pad_token_id`` lets it find the padding tail of packed
    rows, which carry no attention mask. Don't also set transformers' own ``neftune_noise_alpha``.
    """
    return NEFTuneHook(model, alpha, noise_type, schedule, pad_token_id)


class NEFTuneProgressCallback(TrainerCallback):
    """Feeds the trainer's progress (global_step / max_steps) to a :class:`NEFTuneHook`."""

    def __init__(self, hook: NEFTuneHook) -> None:
        self.hook = hook

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.max_steps > 0:
            self.hook.set_progress(state.global_step / state.max_steps)

