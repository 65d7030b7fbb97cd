"""`sftlab pretrain`: block chunking, and a tiny base model that learns and loads with plain transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel, LlamaForCausalLM

from sftlab.cli import main
from sftlab.config import PretrainConfig
from sftlab.errors import UserError
from sftlab.models.tiny import build_config
from sftlab.recipes.pretrain import run_pretrain
from sftlab.train.pretrain import collate_blocks, make_blocks, split_documents, token_stream


def test_token_stream_and_blocks(tiny_tokenizer):
    docs = ["To be, or not to be", "that is the question"]
    stream = token_stream(docs, tiny_tokenizer).tolist()
    eos = tiny_tokenizer.eos_token_id
    first = tiny_tokenizer(docs[0], add_special_tokens=False)["input_ids"]
    second = tiny_tokenizer(docs[1], add_special_tokens=False)["input_ids"]
    assert stream == [eos, *first, eos, *second, eos]  # every document starts right after an EOS

    blocks = make_blocks(torch.tensor(stream), 4)
    assert blocks.shape == (len(stream) // 4, 4)
    assert blocks.flatten().tolist() == stream[: blocks.numel()]  # in order, the tail that fits no block dropped
    batch = collate_blocks([{"input_ids": b} for b in blocks[:2]])
    assert torch.equal(batch["labels"], batch["input_ids"])  # every token trains; the loss shifts


def test_split_documents_is_seeded_and_disjoint():
    docs = [f"doc {i}" for i in range(100)]
    train, held = split_documents(docs, 0.1, seed=3)
    assert len(held) == 10 and sorted(train + held) == sorted(docs)
    assert split_documents(docs, 0.1, seed=3) == (train, held)
    assert split_documents(docs, 0.1, seed=4)[1] != held
    assert len(split_documents(docs[:2], 0.01, seed=0)[1]) == 1  # at least one each side


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data) -> Path:
    """About 1500 short documents of tinyshakespeare, blank-line separated."""
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text()
    docs = [d.strip() for d in text.split("\n\n") if d.strip()][:1500]
    path = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    path.write_text("\n\n".join(docs) + "\n")
    return path


def _config(corpus: Path, out: Path, **kw) -> dict:
    return {
        "corpus": str(corpus),
        "output_dir": str(out),
        "max_length": 64,
        "max_steps": 60,
        "save_steps": 30,
        "logging_steps": 10,
        "tokenizer": {"vocab_size": 800},
        "model": {"n_layer": 2, "n_embd": 64, "n_head": 4},
        **kw,
    }


@pytest.mark.slow
def test_pretrain_lowers_val_loss_and_loads(corpus, tmp_path):
    config = tmp_path / "pretrain.yaml"
    config.write_text(yaml.safe_dump(_config(corpus, tmp_path / "base")))
    assert main(["--offline", "pretrain", str(config)]) == 0

    logs = [json.loads(line) for line in (tmp_path / "base" / "metrics.jsonl").read_text().splitlines()]
    val = [m["eval_loss"] for m in logs if "eval_loss" in m]
    assert [m["step"] for m in logs if "eval_loss" in m] == [0, 30, 60]
    assert val[-1] < val[0] - 1.0, val  # from ln(800) = 6.7 (uniform) towards the corpus' statistics

    model_dir = tmp_path / "base" / "model"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    assert isinstance(model, GPT2LMHeadModel) and model.config.n_layer == 2
    assert len(tokenizer) == 800
    start = torch.tensor([[tokenizer.eos_token_id]])  # a document starts after EOS
    out = model.generate(
        start, max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    assert out.shape == (1, 11)

    # The same config again: the run is complete, so nothing trains and the model is re-saved as it was.
    before = (model_dir / "model.safetensors").read_bytes()
    assert main(["--offline", "pretrain", str(config)]) == 0
    assert (model_dir / "model.safetensors").read_bytes() == before


def test_pretrain_llama_and_refuses_changed_config(corpus, tmp_path):
    cfg = _config(corpus, tmp_path / "llama", max_steps=4, save_steps=2, model={"architecture": "llama", "n_layer": 1,
                                                                                "n_embd": 32, "n_head": 2})
    model_dir = run_pretrain(PretrainConfig(**cfg))
    assert isinstance(AutoModelForCausalLM.from_pretrained(str(model_dir)), LlamaForCausalLM)
    with pytest.raises(UserError, match=r"changed: learning_rate"):
        run_pretrain(PretrainConfig(**{**cfg, "learning_rate": 1e-4}))


def test_dropout_sets_every_rate_of_the_architecture_and_unset_keeps_its_default():
    gpt2 = build_config(100, "gpt2", dropout=0.0)
    assert (gpt2.resid_pdrop, gpt2.embd_pdrop, gpt2.attn_pdrop) == (0.0, 0.0, 0.0)
    assert build_config(100, "gpt2").resid_pdrop == 0.1  # GPT-2's own default
    assert build_config(100, "llama", dropout=0.2).attention_dropout == 0.2
    assert build_config(100, "llama").attention_dropout == 0.0
    with pytest.raises(ValueError, match="dropout"):
        PretrainConfig(corpus=["x"], model={"dropout": 1.0})


def test_pretrain_needs_two_documents(tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("a single document with no blank line\n")
    with pytest.raises(UserError, match="at least 2"):
        run_pretrain(PretrainConfig(**_config(one, tmp_path / "out")))
