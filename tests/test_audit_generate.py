"""Batched, seeded, cached generation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from transformers import GenerationMixin

from sftlab.config import SamplingSettings
from sftlab.data.records import Message
from sftlab.data.tokenize import encode_prompt
from sftlab.models.generate import generate
from sftlab.models.load import load_model
from sftlab.models.reference import model_fingerprint

PROMPTS = ["Write a poem about the sea.", "Hi", "List three colours, please, in order of preference.", "Why?"]


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tiny_tokenizer):
    model = load_model(str(tiny_model_dir))
    ids = [encode_prompt(tiny_tokenizer, [Message("user", p)]) for p in PROMPTS]
    return model, tiny_tokenizer, ids


def test_left_padded_batch_equals_one_by_one(setup) -> None:
    model, tok, ids = setup
    s = SamplingSettings(max_new_tokens=10, batch_size=4)
    batched = generate(model, tok, ids, s, greedy=True, max_length=128)
    for i, p in enumerate(ids):
        alone = generate(model, tok, [p], s, greedy=True, max_length=128)
        assert alone.token_ids[0] == batched.token_ids[i]
    assert batched.texts[0][0] == tok.decode(batched.token_ids[0][0], skip_special_tokens=True)


def test_sampling_is_seeded_and_k_per_prompt(setup) -> None:
    model, tok, ids = setup
    s = SamplingSettings(num_samples=3, max_new_tokens=8, batch_size=6, seed=5)
    a = generate(model, tok, ids, s, greedy=False, max_length=128)
    b = generate(model, tok, ids, s, greedy=False, max_length=128)
    c = generate(model, tok, ids, s.model_copy(update={"seed": 6}), greedy=False, max_length=128)
    assert [len(x) for x in a.texts] == [3, 3, 3, 3]
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids
    assert len({tuple(x) for x in a.token_ids[0]}) > 1  # the K samples differ from each other


def test_cache_is_reused_and_a_lost_chunk_is_regenerated_identically(setup, tmp_path, monkeypatch, tiny_model_dir) -> None:
    model, tok, ids = setup
    s = SamplingSettings(num_samples=2, max_new_tokens=6, batch_size=2, seed=1)  # one prompt per chunk
    fp = model_fingerprint(str(tiny_model_dir))
    first = generate(model, tok, ids, s, greedy=False, max_length=128, cache_dir=tmp_path, fingerprint=fp)
    (key_dir,) = tmp_path.iterdir()
    chunks = sorted(key_dir.glob("chunk_*.json"))
    assert len(chunks) == 4 and not list(key_dir.glob("*.tmp"))
    assert json.loads(chunks[0].read_text())["token_ids"] == first.token_ids[:1]

    def boom(*args, **kwargs):
        raise AssertionError("generate() ran although every chunk was cached")

    monkeypatch.setattr(GenerationMixin, "generate", boom)
    again = generate(model, tok, ids, s, greedy=False, max_length=128, cache_dir=tmp_path, fingerprint=fp)
    assert again.token_ids == first.token_ids
    monkeypatch.undo()

    # A run that crashed after chunk 1: chunks 2 and 3 are missing and are regenerated to the same samples,
    # because each chunk's seed depends only on (seed, chunk index).
    chunks[2].unlink()
    chunks[3].unlink()
    resumed = generate(model, tok, ids, s, greedy=False, max_length=128, cache_dir=tmp_path, fingerprint=fp)
    assert resumed.token_ids == first.token_ids


def test_fingerprint_follows_the_weights(tiny_model_dir, tiny_tokenizer, tmp_path) -> None:
    from conftest import make_tiny_model_dir

    d = make_tiny_model_dir(tmp_path / "m", tiny_tokenizer)
    before = model_fingerprint(str(d))
    assert model_fingerprint(str(d)) == before
    weights = d / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # rewritten weights
    assert model_fingerprint(str(d)) != before
    assert model_fingerprint(str(tiny_model_dir)) != model_fingerprint(str(d))


def test_a_converted_gguf_is_identified_by_its_files_sha256_wherever_its_cache_lies(tmp_path) -> None:
    from sftlab.models.gguf import SOURCE_FILE

    def converted(where: Path, sha: str) -> str:
        where.mkdir(parents=True)
        (where / "model.safetensors").write_bytes(b"w")
        (where / SOURCE_FILE).write_text(json.dumps({"sha256": sha}))
        return str(where)

    first = converted(tmp_path / "cache_a" / "converted" / "m-abc", "abc123")
    moved = converted(tmp_path / "cache_b" / "converted" / "m-abc", "abc123")
    other = converted(tmp_path / "cache_b" / "converted" / "m-def", "def456")
    assert model_fingerprint(first) == model_fingerprint(moved) != model_fingerprint(other)
    # Without the conversion record a dir is identified by its path and files, as any trained model dir.
    (Path(moved) / SOURCE_FILE).unlink()
    assert model_fingerprint(moved) != model_fingerprint(first)
