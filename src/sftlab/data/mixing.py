"""Replay (rehearsal): pretraining-style text mixed into the SFT stream at a set share of trained tokens.

The corpus is tokenized once into one stream (documents joined by EOS). Each epoch draws fresh
windows from it at random offsets, so every epoch replays different text, reproducibly from the seed.
Every token of a window is trained except its first (nothing in the window predicts it).

The share is of *trained* tokens (those with a label, the ones the loss is summed over): with ``S``
SFT target tokens in an epoch and ratio ``R``, the epoch gets ``R / (1 - R) * S`` replay targets, so
replay / (replay + SFT) = R up to rounding to whole tokens. Windows are ``max_length`` tokens long (one
full row each), with one shorter window for the remainder.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from sftlab.data.records import Origin
from sftlab.data.tokenize import IGNORE_INDEX, TokenizedExample, leading_special_ids, tokenize_texts
from sftlab.errors import UserError


def replay_target_tokens(sft_trained_tokens: int, ratio: float) -> int:
    """Replay targets that make ``ratio`` of all targets replay: round(R / (1 - R) * S)."""
    if not 0 <= ratio < 1:
        raise ValueError(f"replay ratio must be in [0, 1), got {ratio}")
    return round(ratio / (1 - ratio) * sft_trained_tokens)


class ReplayPool:
    """A tokenized text corpus to draw replay windows from."""

    def __init__(self, texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, name: str = "replay") -> None:
        if tokenizer.eos_token_id is None:
            raise UserError("the tokenizer has no EOS token to separate replay documents")
        eos = int(tokenizer.eos_token_id)
        lead = leading_special_ids(tokenizer)
        stream: list[int] = []
        for ids in tokenize_texts(tokenizer, texts):
            stream += lead + list(ids) + [eos]
        if len(stream) < 2:
            raise UserError(f"the replay corpus {name} has no text")
        self.stream = np.asarray(stream, dtype=np.int64)
        self.name = name

    def __len__(self) -> int:
        return len(self.stream)

    def sample(self, target_tokens: int, max_length: int, rng: random.Random) -> list[TokenizedExample]:
        """Windows holding ``target_tokens`` trained tokens in all, at random offsets of the stream.

        A window of n tokens trains n - 1 of them. When the corpus is shorter than a window, windows
        are the whole corpus, and text repeats within an epoch.
        """
        width = min(max_length, len(self.stream))
        lengths = [width] * (target_tokens // (width - 1))
        rest = target_tokens % (width - 1)
        if rest:
            lengths.append(rest + 1)
        out = []
        for n in lengths:
            start = rng.randrange(len(self.stream) - n + 1)
            ids = self.stream[start : start + n].tolist()
            out.append(TokenizedExample(ids, [IGNORE_INDEX, *ids[1:]], origin=Origin(self.name, None), is_replay=True))
        return out
