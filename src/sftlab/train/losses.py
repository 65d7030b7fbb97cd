"""Token losses for causal-LM training.

Every loss takes unshifted ``logits`` [B, T, V] and ``labels`` [B, T] (HF convention: position t
predicts label t+1; -100 is ignored) and returns the sum over target tokens divided by
``num_items_in_batch`` (the target-token count of the whole accumulated batch, which keeps gradient
accumulation exact) or, when that is None, by this batch's own target-token count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from sftlab.config import TrainConfig

IGNORE_INDEX = -100


class LossFn(Protocol):
    """A token loss: (logits, labels, num_items_in_batch) -> scalar."""

    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None
    ) -> torch.Tensor: ...


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align position t's logits with token t+1, flattened to [N, V] and [N]."""
    shift_logits = logits[:, :-1, :].reshape(-1, logits.size(-1))
    shift_labels = labels[:, 1:].reshape(-1)
    return shift_logits, shift_labels


def _normalise(total: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None) -> torch.Tensor:
    denom = num_items_in_batch if num_items_in_batch is not None else (labels != IGNORE_INDEX).sum().clamp(min=1)
    if isinstance(denom, torch.Tensor):
        denom = denom.to(total.device)
    return total / denom


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean next-token cross-entropy over target tokens, optionally label-smoothed.

    Label smoothing (Szegedy et al. 2016): the target distribution is (1-eps) * onehot + eps / V.
    """
    shift_logits, shift_labels = shift_for_next_token(logits, labels)
    total = F.cross_entropy(
        shift_logits.float(), shift_labels, ignore_index=IGNORE_INDEX, reduction="sum", label_smoothing=label_smoothing
    )
    return _normalise(total, shift_labels, num_items_in_batch)


def build_loss(cfg: "TrainConfig") -> LossFn:
    """The token loss a train config asks for (``loss`` and its settings)."""
    if cfg.loss == "label_smoothing":
        eps = cfg.label_smoothing_factor
        return lambda logits, labels, n=None: cross_entropy(logits, labels, n, label_smoothing=eps)
    return cross_entropy
