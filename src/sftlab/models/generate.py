"""Batched generation for the audit: K seeded samples per prompt and one greedy answer, cached on disk.

Prompts are left-padded into batches and decoded with ``model.generate`` (KV cache on). Each batch
("chunk") is seeded from ``(seed, chunk index)`` alone, so a chunk's samples do not depend on which
chunks ran before it: a crashed run that resumes from the cache gives the same samples as one that
never stopped.

Cache layout: ``cache_dir/<key>/chunk_<i>.json``, one file per batch, each written atomically
(temporary file + ``os.replace``). ``key`` hashes the model's identity
(:func:`sftlab.models.reference.model_fingerprint`), the prompts' token ids, the generation parameters and
the generation kind (samples or greedy).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

CACHE_VERSION = 1


class SamplingSettings(Protocol):
    """The decoding knobs the sampler reads (:class:`sftlab.config.SamplingSettings` is the validated one).

    A protocol, so that this ground-floor module needs nothing from the config above it.
    """

    num_samples: int
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    batch_size: int
    seed: int


@dataclass
class Generations:
    """Outputs for a list of prompts: ``texts[p]`` and ``token_ids[p]`` hold one entry per sample.

    Token ids are the generated ids up to (not including) the first EOS; texts are their decoding with
    special tokens skipped.
    """

    texts: list[list[str]]
    token_ids: list[list[list[int]]]


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def _strip_after_eos(ids: list[int], eos_ids: set[int]) -> list[int]:
    for i, tok in enumerate(ids):
        if tok in eos_ids:
            return ids[:i]
    return ids


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list):
            ids.update(source)
    return ids


def _chunk_seed(seed: int, chunk: int) -> int:
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])


def write_json_atomic(path: Path, payload: object) -> None:
    """Write ``payload`` as JSON to ``path`` through a temporary file and ``os.replace``: a kill leaves the old
    file or none, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _generation_config(
    settings: SamplingSettings, greedy: bool, k: int, pad_id: int, eos_ids: list[int]
) -> GenerationConfig:
    """Every decoding knob set explicitly.

    transformers fills any field left None from the model's own ``generation_config.json`` (a chat
    model may ship a repetition penalty or top-k): base and tuned must decode the same way, so nothing
    is left to those files. Greedy uses transformers' neutral defaults for the sampling fields, which
    greedy search ignores and which raise no warning.
    """
    return GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=not greedy,
        num_return_sequences=k,
        temperature=1.0 if greedy else settings.temperature,
        top_p=1.0 if greedy else settings.top_p,
        # top_k=0 disables the filter; None would be filled with transformers' default of 50.
        top_k=50 if greedy else settings.top_k,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        pad_token_id=pad_id,
        eos_token_id=eos_ids or None,
    )


def cache_key(fingerprint: str, prompts: Sequence[Sequence[int]], params: dict[str, object]) -> str:
    """Hash of everything that determines the outputs."""
    blob = json.dumps({"v": CACHE_VERSION, "model": fingerprint, "prompts": [list(p) for p in prompts], "params": params},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    settings: SamplingSettings,
    greedy: bool,
    max_length: int,
    cache_dir: Path | None = None,
    fingerprint: str | None = None,
    on_prompts_done: Callable[[int], None] | None = None,
) -> Generations:
    """Generate for every prompt (token ids, as ``sftlab.data.tokenize.encode_prompt`` gives them):
    ``settings.num_samples`` samples, or one greedy answer.

    Batches hold about ``settings.batch_size`` sequences (so ``batch_size // K`` prompts when sampling).
    Prompts are cut to their last ``max_length - max_new_tokens`` tokens. With ``cache_dir`` and
    ``fingerprint`` each finished batch is stored and reused on the next call.
    """
    k = 1 if greedy else settings.num_samples
    per_batch = max(1, settings.batch_size // k)
    params: dict[str, object] = {"greedy": greedy, "max_new_tokens": settings.max_new_tokens,
                                 "max_length": max_length, "per_batch": per_batch}
    if not greedy:
        params.update(num_samples=k, temperature=settings.temperature, top_p=settings.top_p,
                      top_k=settings.top_k, seed=settings.seed)
    chunk_dir = None
    if cache_dir is not None and fingerprint is not None:
        chunk_dir = Path(cache_dir) / cache_key(fingerprint, prompts, params)
        chunk_dir.mkdir(parents=True, exist_ok=True)

    gen_config = _generation_config(settings, greedy, k, tokenizer.pad_token_id, sorted(_eos_ids(model, tokenizer)))
    max_prompt = max(1, max_length - settings.max_new_tokens)
    encoded = [list(p)[-max_prompt:] for p in prompts]
    eos = _eos_ids(model, tokenizer)
    device = next(model.parameters()).device

    texts: list[list[str]] = []
    token_ids: list[list[list[int]]] = []
    for chunk, start in enumerate(range(0, len(prompts), per_batch)):
        batch = encoded[start : start + per_batch]
        cached = chunk_dir / f"chunk_{chunk:05d}.json" if chunk_dir is not None else None
        if cached is not None and cached.is_file():
            payload = json.loads(cached.read_text(encoding="utf-8"))
        else:
            ids, mask = _left_pad(batch, tokenizer.pad_token_id)
            if not greedy:
                torch.manual_seed(_chunk_seed(settings.seed, chunk))
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 generation_config=gen_config)
            new = out[:, ids.shape[1] :].tolist()
            seqs = [_strip_after_eos(row, eos) for row in new]
            payload = {
                "token_ids": [seqs[i * k : (i + 1) * k] for i in range(len(batch))],
                "texts": [tokenizer.batch_decode(seqs[i * k : (i + 1) * k], skip_special_tokens=True)
                          for i in range(len(batch))],
            }
            if cached is not None:
                write_json_atomic(cached, payload)
        texts.extend(payload["texts"])
        token_ids.extend(payload["token_ids"])
        if on_prompts_done is not None:
            on_prompts_done(len(batch))
    return Generations(texts=texts, token_ids=token_ids)
