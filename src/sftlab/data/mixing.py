"""Replay (rehearsal): other data mixed into the SFT stream at a set share of trained tokens.

Two sources (``replay.source``):

- ``corpus`` (:class:`ReplayPool`): pretraining-style text, in windows drawn fresh every epoch.
- ``self`` (:class:`SelfReplayPool`): the base model's own answers to general prompts, generated once
  with the audit's sampler and cached (:func:`self_replay_pool`). "Retaining by Doing" (Chen et al.
  2025, arXiv:2510.18874) traces RL's lower forgetting to its on-policy data and suggests approximately
  on-policy data as a cheap mitigation; replaying the base's own answers is such data, and it needs no
  pretraining corpus: the replay for a user who has only a downloaded chat model and some prompts.

Corpus replay:

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
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from transformers import PreTrainedTokenizerBase

from sftlab.data.records import Message, Origin, Record
from sftlab.data.tokenize import Encoder, TokenizedExample, leading_special_ids, tokenize_texts
from sftlab.errors import UserError
from sftlab.models.tokens import IGNORE_INDEX

if TYPE_CHECKING:
    from sftlab.config import TrainConfig


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


class SelfReplayPool:
    """SFT examples to replay whole: prompts with the base model's own answers (prompt tokens untrained).

    Each epoch draws examples in a fresh random order (from its ``rng``), without repeats until all have
    been used, until the drawn answers hold ``target_tokens`` trained tokens. Examples are whole, so the
    epoch's replay share is met to within one example: the last one is kept when that brings the count
    nearer the target than leaving it out.
    """

    def __init__(self, examples: Sequence[TokenizedExample], name: str = "self-replay") -> None:
        self.examples = [replace(e, is_replay=True) for e in examples if e.num_trained > 0]
        if not self.examples:
            raise UserError(f"{name}: the base model gave no answer with a trainable token to replay")
        self.name = name

    def __len__(self) -> int:
        return len(self.examples)

    def sample(self, target_tokens: int, max_length: int, rng: random.Random) -> list[TokenizedExample]:
        """Whole examples holding about ``target_tokens`` trained tokens (``max_length`` is already applied)."""
        out: list[TokenizedExample] = []
        order: list[int] = []
        total = 0
        while total < target_tokens:
            if not order:
                order = list(range(len(self.examples)))
                rng.shuffle(order)
            example = self.examples[order.pop()]
            out.append(example)
            total += example.num_trained
        if out and total - target_tokens > target_tokens - (total - out[-1].num_trained):
            out.pop()
        return out


def self_replay_records(
    prompts: Sequence[Sequence[Message]], answers: Sequence[Sequence[str]], name: str
) -> tuple[list[Record], int]:
    """One conversation record per (prompt, non-empty answer); also the number of empty answers dropped."""
    records, empty = [], 0
    for i, (prompt, texts) in enumerate(zip(prompts, answers), start=1):
        for j, text in enumerate(texts, start=1):
            if not text.strip():
                empty += 1
                continue
            messages = [*prompt, Message("assistant", text)]
            records.append(Record("conversation", Origin(name, i, j if len(texts) > 1 else None), messages=messages,
                                  format="self_replay"))
    return records, empty


def self_replay_pool(cfg: "TrainConfig", tokenizer: PreTrainedTokenizerBase) -> SelfReplayPool:
    """``replay.source: self``: the base (``cfg.model_name_or_path``) answers every prompt of
    ``replay.prompts`` (greedy, or ``sampling.num_samples`` samples), through the audit's sampler and its
    cache; the answers, after the prompts in the training format, become the replay examples.

    The model is loaded here, in eval mode, only to generate; a run whose answers are all cached loads
    it but generates nothing.
    """
    from sftlab.data.base_answers import answer_prompts, default_cache_dir, generation_device
    from sftlab.data.readers import read_prompts
    from sftlab.models.load import is_adapter_dir, load_model

    replay = cfg.replay
    assert replay is not None and replay.source == "self" and replay.prompts is not None
    if not Path(replay.prompts).exists():
        raise UserError(f"replay.prompts not found: {replay.prompts}")
    prompts = read_prompts(replay.prompts)
    base = cfg.model_name_or_path
    device = generation_device()
    model = load_model(base, dtype="auto", device=device, trust_remote_code=cfg.trust_remote_code,
                       merge_adapter=is_adapter_dir(base))
    cache = Path(replay.cache_dir) if replay.cache_dir else default_cache_dir("self_replay")
    out = answer_prompts(model, tokenizer, base, prompts, replay.sampling, greedy=replay.answers == "greedy",
                         max_length=cfg.max_length, cache_dir=cache, description="self-replay: base answers")
    del model
    records, _ = self_replay_records(prompts, out.texts, replay.prompts)
    examples, _ = Encoder(tokenizer).encode(records, cfg.max_length, completion_only_loss=True)
    return SelfReplayPool(examples, name=replay.name)
