"""The base model's own answers to a list of prompts, through the audit's sampler and its disk cache.

Self-replay (``replay.source: self``) and self-distillation (``sftlab data distill``) both need a model to
answer many prompts once. Both go through :func:`sftlab.models.generate.generate`: batched, KV-cached,
each batch written to the cache as it finishes and keyed by the model's files, the prompts' token ids and
the decoding settings. A second run, or one restarted after a kill, reads the finished batches back and
generates only the rest.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sftlab.settings import SamplingSettings
from sftlab.data.records import Message
from sftlab.data.tokenize import encode_prompt
from sftlab.errors import UserError
from sftlab.models.cache import cache_root
from sftlab.models.generate import Generations, generate
from sftlab.models.load import context_limit
from sftlab.models.reference import model_fingerprint


def default_cache_dir(kind: str) -> Path:
    """``<cache root>/<kind>``, the root being ``$SFTLAB_CACHE`` or ``~/.cache/sftlab`` (where converted models
    also live): shared by every run on this machine, which is safe because each entry is keyed by the
    model's files, the prompts and the settings."""
    return cache_root() / kind


def generation_device() -> str:
    """This process's GPU when there is one (its LOCAL_RANK's under torchrun), else the CPU."""
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def answer_prompts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    model_path: str,
    prompts: Sequence[Sequence[Message]],
    sampling: SamplingSettings,
    greedy: bool,
    max_length: int,
    cache_dir: Path,
    description: str,
) -> Generations:
    """``model``'s answers to ``prompts`` (chat turns ending in a user turn), encoded as training encodes
    them, with a progress bar; finished batches are cached under ``cache_dir`` and reused.

    ``max_length`` (prompt + answer) is capped at the model's positions; a longer prompt keeps its end."""
    max_length = context_limit(model, max_length)
    if max_length <= sampling.max_new_tokens:
        raise UserError(f"{model_path} knows {max_length} positions, and answers of up to {sampling.max_new_tokens} "
                        "new tokens leave no room for a prompt: lower max_new_tokens")
    prompt_ids = [encode_prompt(tokenizer, list(p)) for p in prompts]
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(description, total=len(prompt_ids))
        return generate(
            model,
            tokenizer,
            prompt_ids,
            sampling,
            greedy=greedy,
            max_length=max_length,
            cache_dir=cache_dir,
            fingerprint=model_fingerprint(model_path),
            on_prompts_done=lambda n: progress.advance(task, n),
        )
