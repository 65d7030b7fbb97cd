"""Plain causal-LM pretraining data: documents joined by EOS and cut into fixed blocks (``group_texts`` style).

The token stream is ``EOS d1 EOS d2 EOS ... dn EOS``: every document starts right after an EOS, so a
model sampled from a lone EOS (BOS) token starts a fresh document. The stream is cut into rows of
``block_size`` tokens and the tail that does not fill a row is dropped, so every trained token is real:
no padding, no masking. Blocks may span a document boundary, as in GPT-2 pretraining.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase


def split_documents(texts: Sequence[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out ``eval_fraction`` of the documents (at least one each side), shuffled with ``seed``."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(len(texts) * eval_fraction)), len(texts) - 1)
    held = set(order[:n_eval])
    train = [t for i, t in enumerate(texts) if i not in held]
    held_out = [t for i, t in enumerate(texts) if i in held]
    return train, held_out


def token_stream(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """All documents as one 1-D tensor of ids, each preceded by EOS, with a final EOS."""
    eos = tokenizer.eos_token_id
    # verbose=False: documents longer than model_max_length are expected here (they are cut into blocks).
    ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    stream = [eos]
    for doc in ids:
        stream.extend(doc)
        stream.append(eos)
    return torch.tensor(stream, dtype=torch.long)


def make_blocks(stream: torch.Tensor, block_size: int) -> torch.Tensor:
    """Cut a 1-D token stream into ``[n, block_size]`` rows; the incomplete tail is dropped."""
    n = stream.numel() // block_size
    return stream[: n * block_size].view(n, block_size)


class BlockDataset(torch.utils.data.Dataset):
    """Rows of a ``[n, block_size]`` tensor; each item is ``{"input_ids": row}``."""

    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.size(0)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[index]}


def collate_blocks(features: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack blocks; every token is a target (labels are the inputs; the loss shifts them)."""
    input_ids = torch.stack([f["input_ids"] for f in features])
    return {"input_ids": input_ids, "labels": input_ids}
