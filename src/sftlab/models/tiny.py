"""Offline base models: train a byte-level BPE tokenizer and build small decoder configs.

Nothing here downloads anything, so tests and the demo can make their own base models.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, LlamaConfig, PretrainedConfig, PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"

# Dimensions per preset. "tiny" is about 1M parameters and "small" about 10M with a 4k vocabulary.
SIZE_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 4, "n_embd": 128, "n_head": 4},
    "small": {"n_layer": 8, "n_embd": 288, "n_head": 8},
}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style) on ``texts``.

    Byte-level means any string encodes, with no unknown token. ``<|endoftext|>`` serves as BOS and EOS
    and ``<|pad|>`` as padding, so padding never collides with a trained token.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=100_000,
    )


def build_config(
    vocab_size: int,
    architecture: Literal["gpt2", "llama"] = "gpt2",
    size: Literal["tiny", "small"] = "tiny",
    max_position_embeddings: int = 512,
    eos_token_id: int = 0,
    pad_token_id: int = 1,
    dropout: float | None = None,
    **overrides: int | None,
) -> PretrainedConfig:
    """A small decoder config from a size preset; ``n_layer``/``n_embd``/``n_head`` may override it.

    ``dropout`` sets every dropout the architecture has; None keeps its default.
    """
    dims = {**SIZE_PRESETS[size], **{k: v for k, v in overrides.items() if v is not None}}
    if dims["n_embd"] % dims["n_head"]:
        raise ValueError(f"n_embd {dims['n_embd']} is not divisible by n_head {dims['n_head']}")
    common = {"vocab_size": vocab_size, "bos_token_id": eos_token_id, "eos_token_id": eos_token_id,
              "pad_token_id": pad_token_id, "tie_word_embeddings": True}
    if architecture == "gpt2":
        rates = {} if dropout is None else {"resid_pdrop": dropout, "embd_pdrop": dropout, "attn_pdrop": dropout}
        return GPT2Config(
            n_positions=max_position_embeddings,
            n_layer=dims["n_layer"],
            n_embd=dims["n_embd"],
            n_head=dims["n_head"],
            **rates,
            **common,
        )
    if architecture == "llama":
        hidden = dims["n_embd"]
        return LlamaConfig(
            hidden_size=hidden,
            # SwiGLU's three matrices at 8/3 * hidden keep the MLP about as large as GPT-2's 4 * hidden.
            intermediate_size=(8 * hidden // 3 + 7) // 8 * 8,
            num_hidden_layers=dims["n_layer"],
            num_attention_heads=dims["n_head"],
            num_key_value_heads=dims["n_head"],
            max_position_embeddings=max_position_embeddings,
            **({} if dropout is None else {"attention_dropout": dropout}),
            **common,
        )
    raise ValueError(f"unknown architecture {architecture!r}; choose gpt2 or llama")


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | Path) -> None:
    """Save so that ``AutoTokenizer.from_pretrained(out_dir)`` loads it."""
    tokenizer.save_pretrained(str(out_dir))
