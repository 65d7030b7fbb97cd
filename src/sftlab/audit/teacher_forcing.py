"""Teacher forcing in batches: the logits a model gives to known continuations, one forward pass per batch.

Shared by the shift scorer (tuned answers through the base) and the forgetting metrics (perplexity,
multiple-choice log-likelihood).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel


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
    be non-empty, since the first continuation token needs a predecessor.
    """
    device = next(model.parameters()).device
    ids, mask = right_pad([list(c) + list(a) for c, a in zip(contexts, continuations)], pad_id, device)
    logits = model(input_ids=ids, attention_mask=mask).logits
    rows, cols = [], []
    for row, (c, a) in enumerate(zip(contexts, continuations)):
        # The logit at position p predicts token p + 1, and continuation token j sits at len(c) + j.
        rows.extend([row] * len(a))
        cols.extend(range(len(c) - 1, len(c) - 1 + len(a)))
    return logits[torch.tensor(rows, device=device, dtype=torch.long), torch.tensor(cols, device=device, dtype=torch.long)]


def continuation_logprobs(
    model: PreTrainedModel,
    contexts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    pad_id: int,
) -> list[torch.Tensor]:
    """Per example, the float32 log-probability of each continuation token given everything before it."""
    logits = continuation_logits(model, contexts, continuations, pad_id)
    targets = torch.tensor([t for a in continuations for t in a], device=logits.device, dtype=torch.long)
    lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    return list(torch.split(lp.cpu(), [len(a) for a in continuations]))
