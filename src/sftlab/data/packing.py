"""Packing documents into full rows, and the collator that batches rows for the model.

Packing is best-fit decreasing: documents longest first, each into the open row whose free space it
fills best (the fullest row it still fits), or a new row. Position ids restart at 0 at every document.

Attention never crosses documents. With no attention mask and restarting position ids, transformers
(5.x, ``masking_utils.find_packed_sequence_indices``) builds a block-diagonal causal mask for sdpa,
eager and flex attention, and flash-attention runs varlen attention from the same position ids. That
detection is skipped when a KV cache is passed or created, so **a model must run packed batches with
``use_cache=False``**: the Trainer sets ``model.config.use_cache = args.use_cache`` (False by
default); any other forward (a frozen base for KL, an evaluation script) must pass it. Checked for
GPT-2 and Llama in tests/test_packing.py: packed per-document losses equal unpacked ones, and with
``use_cache=True`` they do not.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from sftlab.data.tokenize import TokenizedExample
from sftlab.models.tokens import IGNORE_INDEX


@dataclass
class PackedRow:
    """Several documents in one row; ``doc_lengths`` in order, ``position_ids`` restart per document."""

    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    replay_mask: list[int] = field(default_factory=list)
    doc_lengths: list[int] = field(default_factory=list)

    def add(self, example: TokenizedExample) -> None:
        """Append one document."""
        n = len(example.input_ids)
        self.input_ids += example.input_ids
        self.labels += example.labels
        self.position_ids += range(n)
        self.replay_mask += [int(example.is_replay)] * n
        self.doc_lengths.append(n)

    def __len__(self) -> int:
        return len(self.input_ids)


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bin indices for items of ``lengths``, each bin summing to at most ``capacity``.

    Best-fit decreasing (Johnson 1973): at most 11/9 OPT + 6/9 bins. Ties keep input order, so the
    result depends only on the lengths, which makes it reproducible.
    """
    too_long = [n for n in lengths if n > capacity]
    if too_long:
        raise ValueError(f"an item of length {too_long[0]} exceeds the row capacity {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    # Open bins as (free space, bin index), sorted, so the best fit is a binary search away.
    free: list[tuple[int, int]] = []
    for i in order:
        n = lengths[i]
        pos = bisect.bisect_left(free, (n, -1))
        if pos < len(free):
            space, b = free.pop(pos)
        else:
            space, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if space - n > 0:
            bisect.insort(free, (space - n, b))
    return bins


def pack_examples(examples: Sequence[TokenizedExample], max_length: int) -> list[PackedRow]:
    """Pack documents into rows of at most ``max_length`` tokens (best-fit decreasing)."""
    rows = []
    for members in best_fit_decreasing([len(e.input_ids) for e in examples], max_length):
        row = PackedRow()
        for i in members:
            row.add(examples[i])
        rows.append(row)
    return rows


def real_token_fraction(row_lengths: Sequence[int], padded_length: int) -> float:
    """Real (non-pad) tokens over all token slots when every row is padded to ``padded_length``."""
    if not row_lengths:
        return 0.0
    return sum(row_lengths) / (len(row_lengths) * padded_length)


class SFTCollator:
    """Pads rows into a batch.

    Plain rows give ``input_ids``, ``attention_mask`` and ``labels``, right-padded. Packed rows (rows
    with ``position_ids``) give ``input_ids``, ``labels`` and ``position_ids`` and no attention mask, so
    the model makes the block-diagonal mask itself (see the module docstring); the padding tail is a
    document of its own (positions from 0, labels -100). ``return_replay_mask`` adds ``replay_mask``
    (1 on replay tokens), which the trainer must pop before calling the model; it needs the Trainer's
    ``remove_unused_columns=False``, or the Trainer strips ``replay_mask`` from the rows first.
    """

    def __init__(
        self,
        pad_token_id: int | PreTrainedTokenizerBase,
        pad_to_multiple_of: int | None = None,
        return_replay_mask: bool = False,
    ) -> None:
        if isinstance(pad_token_id, PreTrainedTokenizerBase):
            tokenizer = pad_token_id
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            if pad is None:
                raise ValueError("the tokenizer has neither a pad token nor an EOS token to pad with")
            pad_token_id = int(pad)
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.return_replay_mask = return_replay_mask

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        packed = "position_ids" in features[0]
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        extra = torch.zeros((len(features), width), dtype=torch.long)  # attention mask or position ids
        replay = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[i, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.tensor(f["labels"], dtype=torch.long)
            if packed:
                extra[i, :n] = torch.tensor(f["position_ids"], dtype=torch.long)
                extra[i, n:] = torch.arange(width - n)
            else:
                extra[i, :n] = 1
            if self.return_replay_mask:
                if "replay_mask" not in f:
                    # The Trainer strips columns the model's forward does not take unless told not to.
                    raise ValueError("rows carry no replay_mask: build the Trainer with remove_unused_columns=False")
                replay[i, :n] = torch.tensor(f["replay_mask"], dtype=torch.long)
        batch = {"input_ids": input_ids, "labels": labels}
        batch["position_ids" if packed else "attention_mask"] = extra
        if self.return_replay_mask:
            batch["replay_mask"] = replay
        return batch
