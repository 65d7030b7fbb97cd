"""NEFTune: per-sequence noise scale alpha/sqrt(L*d), clean padding, packing, eval mode, PEFT."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from sftlab.train.neftune import attach_neftune, neftune_noise, sequence_lengths

ALPHA = 5.0
DRAWS = 20  # forwards per measurement: more samples, tighter estimates


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def model(tiny_model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).train()


def _measured_noise(model: torch.nn.Module, embedding: torch.nn.Module, **inputs: torch.Tensor) -> torch.Tensor:
    """Noisy minus clean input embeddings over DRAWS forwards: [DRAWS, B, T, d]."""
    seen: list[torch.Tensor] = []
    # Registered after NEFTune's hook, so it sees the noised output.
    handle = embedding.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    try:
        with torch.no_grad():
            for _ in range(DRAWS):
                model(**inputs)
    finally:
        handle.remove()
    clean = F.embedding(inputs["input_ids"], embedding.weight).detach()
    return torch.stack(seen) - clean


def _check_scale(noise: torch.Tensor, length: int, d: int, alpha: float = ALPHA) -> None:
    """Uniform noise on [-s, s], s = alpha/sqrt(L*d): max |n| <= s, and sqrt(3)*std = s within 4 sigma."""
    expected = alpha / math.sqrt(length * d)
    n = noise.numel()
    # For u ~ U(-1, 1), the relative standard error of the std estimate is sqrt(4/45) / (2/3) / sqrt(n).
    tol = 4 * 1.5 * math.sqrt(4 / 45) / math.sqrt(n)
    assert noise.abs().max().item() <= expected * (1 + 1e-5)
    assert noise.abs().max().item() >= expected * 0.97  # with n in the thousands the max nears the bound
    assert math.sqrt(3) * noise.pow(2).mean().sqrt().item() == pytest.approx(expected, rel=tol)


def test_scale_follows_each_sequences_own_length_and_padding_is_clean(model: torch.nn.Module) -> None:
    emb = model.get_input_embeddings()
    d = emb.embedding_dim
    ids = torch.randint(2, 500, (2, 24))
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[0, 6:] = 0  # row 0: 6 real tokens, right-padded; row 1: 24 real tokens
    hook = attach_neftune(model, ALPHA)
    noise = _measured_noise(model, emb, input_ids=ids, attention_mask=mask)
    _check_scale(noise[:, 0, :6], 6, d)
    _check_scale(noise[:, 1], 24, d)
    assert noise[:, 0, 6:].abs().max().item() == 0.0
    # transformers' own hook would use alpha/sqrt(24*d) for both rows and noise row 0's padding.
    hook.remove()
    assert _measured_noise(model, emb, input_ids=ids, attention_mask=mask).abs().max().item() == 0.0


def test_left_padding_counts_real_tokens(model: torch.nn.Module) -> None:
    emb = model.get_input_embeddings()
    ids = torch.randint(2, 500, (1, 16))
    mask = torch.ones(1, 16, dtype=torch.long)
    mask[0, :12] = 0
    attach_neftune(model, ALPHA)
    noise = _measured_noise(model, emb, input_ids=ids, attention_mask=mask)
    _check_scale(noise[:, 0, 12:], 4, emb.embedding_dim)
    assert noise[:, 0, :12].abs().max().item() == 0.0


def test_no_noise_in_eval_mode(model: torch.nn.Module) -> None:
    emb = model.get_input_embeddings()
    attach_neftune(model, ALPHA)
    model.eval()
    noise = _measured_noise(model, emb, input_ids=torch.randint(2, 500, (2, 8)))
    assert noise.abs().max().item() == 0.0


def test_packed_rows_scale_by_document_length(model: torch.nn.Module) -> None:
    """One packed row: documents of 10 and 30 tokens (position_ids restart), then 8 pad tokens."""
    emb = model.get_input_embeddings()
    d = emb.embedding_dim
    ids = torch.randint(2, 500, (1, 48))
    position_ids = torch.cat([torch.arange(10), torch.arange(30), torch.arange(8)])[None]
    mask = torch.ones(1, 48, dtype=torch.long)
    mask[0, 40:] = 0
    attach_neftune(model, ALPHA)
    noise = _measured_noise(model, emb, input_ids=ids, attention_mask=mask, position_ids=position_ids)
    _check_scale(noise[:, 0, :10], 10, d)
    _check_scale(noise[:, 0, 10:40], 30, d)
    assert noise[:, 0, 40:].abs().max().item() == 0.0


def test_packed_batch_without_mask_leaves_the_padding_tail_clean(model: torch.nn.Module) -> None:
    """As the packing collator sends it: no attention mask, the padding tail a document of pad ids."""
    from sftlab.data.packing import SFTCollator

    pad = 0
    emb = model.get_input_embeddings()
    rows = [
        {"input_ids": list(range(10, 22)), "labels": list(range(10, 22)), "position_ids": list(range(12))},
        {"input_ids": list(range(30, 50)), "labels": list(range(30, 50)),
         "position_ids": list(range(8)) + list(range(12))},
    ]
    batch = SFTCollator(pad)(rows)
    assert "attention_mask" not in batch
    attach_neftune(model, ALPHA, pad_token_id=pad)
    noise = _measured_noise(model, emb, input_ids=batch["input_ids"], position_ids=batch["position_ids"])
    _check_scale(noise[:, 0, :12], 12, emb.embedding_dim)
    assert noise[:, 0, 12:].abs().max().item() == 0.0  # row 0's 8-token pad tail
    _check_scale(noise[:, 1, :8], 8, emb.embedding_dim)
    _check_scale(noise[:, 1, 8:], 12, emb.embedding_dim)


def test_sequence_lengths_by_hand() -> None:
    real = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]])
    assert sequence_lengths(real).tolist() == [[5, 5, 5, 5, 5, 0], [0, 0, 4, 4, 4, 4]]
    pos = torch.tensor([[0, 1, 0, 1, 2, 0], [0, 1, 2, 0, 1, 2]])
    assert sequence_lengths(real, pos).tolist() == [[2, 2, 3, 3, 3, 0], [0, 0, 1, 3, 3, 3]]


def test_gaussian_noise_has_the_uniforms_variance() -> None:
    """gaussian: N(0, 1) * alpha / sqrt(3 L d), the same per-element variance as the uniform."""
    torch.manual_seed(0)
    embeds = torch.zeros(2, 50, 64)
    real = torch.ones(2, 50)
    real[1, 10:] = 0
    noise = neftune_noise(embeds, real, ALPHA, "gaussian")
    for row, length in ((0, 50), (1, 10)):
        sample = noise[row, :length]
        expected_std = ALPHA / math.sqrt(3 * length * 64)
        tol = 4 / math.sqrt(2 * sample.numel())  # relative standard error of a normal std estimate
        assert sample.std().item() == pytest.approx(expected_std, rel=tol)
    assert noise[1, 10:].abs().max().item() == 0.0


def test_linear_decay_schedule(model: torch.nn.Module) -> None:
    emb = model.get_input_embeddings()
    ids = torch.randint(2, 500, (1, 12))
    hook = attach_neftune(model, ALPHA, schedule="linear_decay")
    hook.set_progress(0.5)
    _check_scale(_measured_noise(model, emb, input_ids=ids)[:, 0], 12, emb.embedding_dim, alpha=ALPHA / 2)
    hook.set_progress(1.0)
    assert _measured_noise(model, emb, input_ids=ids).abs().max().item() == 0.0


def test_works_on_a_peft_lora_model(model: torch.nn.Module) -> None:
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
    peft_model.train()
    emb = peft_model.get_input_embeddings()
    ids = torch.randint(2, 500, (2, 20))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, 5:] = 0
    attach_neftune(peft_model, ALPHA)
    noise = _measured_noise(peft_model, emb, input_ids=ids, attention_mask=mask)
    _check_scale(noise[:, 0], 20, emb.embedding_dim)
    _check_scale(noise[:, 1, :5], 5, emb.embedding_dim)
    assert noise[:, 1, 5:].abs().max().item() == 0.0
    # The noisy forward still trains the adapter.
    out = peft_model(input_ids=ids, attention_mask=mask, labels=ids)
    out.loss.backward()
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
