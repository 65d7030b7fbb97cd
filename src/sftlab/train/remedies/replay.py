"""Replay (``replay: {source, corpus | prompts, ratio, ...}``): general text mixed into the SFT stream, from a
corpus or from the base model's own answers (self-replay). The mixing is ``sftlab.data.mixing``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from sftlab.settings import SamplingSettings, StrictModel
from sftlab.train.remedies.base import Remedy, RemedyContext


class ReplaySettings(StrictModel):
    """Replay mixed into the SFT stream: plain pretraining-style text (``source: corpus``), or the base
    model's own answers to general prompts (``source: self``), generated once and cached."""

    source: Literal["corpus", "self"] = "corpus"
    corpus: str | None = Field(None, description="source corpus: the text file (or text records) to replay")
    prompts: str | None = Field(None, description="source self: the prompts file the base answers")
    answers: Literal["greedy", "sampled"] = Field(
        "greedy", description="source self: the base's greedy answer, or sampling.num_samples samples per prompt"
    )
    sampling: SamplingSettings = Field(
        default_factory=lambda: SamplingSettings(num_samples=1, max_new_tokens=128),
        description="source self: decoding settings (the audit's); max_new_tokens caps each answer",
    )
    cache_dir: str | None = Field(
        None, description="source self: where answers are cached (default $SFTLAB_CACHE/self_replay, else ~/.cache/sftlab/self_replay)"
    )
    ratio: float = Field(0.2, gt=0, lt=1, description="fraction of training tokens that are replay")

    @model_validator(mode="after")
    def _source_input(self) -> ReplaySettings:
        if self.source == "corpus" and (self.corpus is None or self.prompts is not None):
            raise ValueError("replay source corpus takes replay.corpus (a text file), not replay.prompts")
        if self.source == "self" and (self.prompts is None or self.corpus is not None):
            raise ValueError("replay source self takes replay.prompts (a prompts file), not replay.corpus")
        return self

    @property
    def name(self) -> str:
        """What is replayed, in a few words."""
        if self.source == "corpus":
            return str(self.corpus)
        return f"the base's own {self.answers} answers to {self.prompts}"


def build(ctx: RemedyContext) -> dict[str, Any]:
    """The replay pool for ``build_train_dataset``: the corpus's documents, or the base's answers (generated
    once through the audit's sampler and cached)."""
    from sftlab.data.mixing import ReplayPool, self_replay_pool
    from sftlab.data.readers import read_texts

    replay = ctx.cfg.replay
    if replay.source == "self":
        return {"replay_pool": self_replay_pool(ctx.cfg, ctx.tokenizer)}
    assert replay.corpus is not None
    return {"replay_pool": ReplayPool(read_texts(replay.corpus), ctx.tokenizer, name=replay.name)}


REMEDY = Remedy(
    key="replay",
    stage="data",
    summary="replay: a share of the training tokens is general text (a corpus, or the base's own answers)",
    fields={"replay": (ReplaySettings | None, None)},
    active=lambda cfg: cfg.replay is not None,
    describe=lambda cfg: f"replay {cfg.replay.ratio:.0%} of tokens from {cfg.replay.name}",
    build=build,
)
