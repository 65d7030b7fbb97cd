"""Teacher forcing in batches: the logits a model gives to known continuations, one forward pass per batch.

Shared by the shift scorer (tuned answers through the base), the forgetting forecast and the forgetting
metrics (perplexity, multiple-choice log-likelihood).

Memory is bounded by the positions scored, not by the batch: the output head runs only on the hidden
states that predict a continuation token (a context's prompt positions never reach the vocabulary-wide
product), and every float32 computation over the vocabulary runs a slice of rows at a time, the slices
the training loss takes (:func:`sftlab.models.tokens.rows_per_slice`: 64 rows of SmolLM2's 49,152 tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel

from sftlab.models.tokens import rows_per_slice


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), right-padded so every row keeps positions 0..len-1."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids.to(device), mask.to(device)


def continuation_logits(
    model: PreTrainedModel,
    contexts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    pad_id: int,
) -> torch.Tensor:
    """Logits predicting each continuation token, stacked: shape (sum of continuation lengths, V).

    Row ``j`` of example ``i``'s block is the model's next-token logits after ``contexts[i] +
    continuations[i][:j]``, from a single forward pass over the right-padded batch. Every context must
    be non-empty, since the first continuation token needs a predecessor. A forward pre-hook on the
    output head hands it only those positions' hidden states, so the head's product and its logits
    cover the continuations alone; a model whose forward never calls its head module gets the full
    logits indexed instead, the same rows.
    """
    device = next(model.parameters()).device
    ids, mask = right_pad([list(c) + list(a) for c, a in zip(contexts, continuations)], pad_id, device)
    rows, cols = [], []
    for row, (c, a) in enumerate(zip(contexts, continuations)):
        # The logit at position p predicts token p + 1, and continuation token j sits at len(c) + j.
        rows.extend([row] * len(a))
        cols.extend(range(len(c) - 1, len(c) - 1 + len(a)))
    rows_t = torch.tensor(rows, device=device, dtype=torch.long)
    cols_t = torch.tensor(cols, device=device, dtype=torch.long)
    head = model.get_output_embeddings()
    gathered = False

    def gather(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        nonlocal gathered
        hidden = args[0]
        # Virtual tokens (prompt tuning) are prepended: align the hidden states to the ids from the right.
        offset = hidden.size(1) - ids.size(1)
        gathered = True
        return (hidden[rows_t, cols_t + offset].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(gather) if head is not None else None
    try:
        logits = model(input_ids=ids, attention_mask=mask).logits
    finally:
        if handle is not None:
            handle.remove()
    if gathered:
        return logits[0]
    return logits[rows_t, cols_t + logits.size(1) - ids.size(1)]


def in_row_slices(fn: Callable[..., dict[str, torch.Tensor] | tuple[torch.Tensor, ...]],
                  *tensors: torch.Tensor) -> Any:
    """``fn(*tensors)`` for a function that treats each row on its own, computed a slice of rows at a time and
    concatenated: the same result, with every temporary of ``fn`` a slice's size. The first tensor's last
    dimension is the vocabulary, which sets the slice (:func:`~sftlab.models.tokens.rows_per_slice`).

    ``fn`` returns a dict of tensors (concatenated per key) or a tuple of them (per element).
    """
    n, rows = tensors[0].size(0), rows_per_slice(tensors[0].size(-1))
    parts = [fn(*(t[start : start + rows] for t in tensors)) for start in range(0, n, rows)]
    if not parts:
        return fn(*tensors)
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return tuple(torch.cat(column) for column in zip(*parts))


def continuation_logprobs(
    model: PreTrainedModel,
    contexts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    pad_id: int,
) -> list[torch.Tensor]:
    """Per example, the float32 log-probability of each continuation token given everything before it."""
    logits = continuation_logits(model, contexts, continuations, pad_id)
    targets = torch.tensor([t for a in continuations for t in a], device=logits.device, dtype=torch.long)

    def chosen(rows: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor]:
        rows = rows.float()
        return (rows.gather(-1, tokens[:, None]).squeeze(-1) - rows.logsumexp(-1),)

    (lp,) = in_row_slices(chosen, logits, targets)
    return list(torch.split(lp.cpu(), [len(a) for a in continuations]))
