"""NEFTune: per-sequence noise scale alpha/sqrt(L*d), clean padding, packing, eval mode, PEFT; the noise
types' shared variance and the hidden-layer variant."""

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


# E[eps^4] / Var(eps)^2 of each noise type: the variance of eps^2 is (kurtosis - 1) Var^2.
KURTOSIS = {"uniform": 1.8, "gaussian": 3.0, "laplace": 6.0}


def _check_variance(noise: torch.Tensor, length: int, d: int, noise_type: str, alpha: float = ALPHA) -> None:
    """Every type's per-element variance is (alpha / sqrt(L d))^2 / 3: the mean square within 4 sigma."""
    expected = (alpha / math.sqrt(length * d)) ** 2 / 3
    tol = 4 * math.sqrt(KURTOSIS[noise_type] - 1) / math.sqrt(noise.numel())
    assert noise.pow(2).mean().item() == pytest.approx(expected, rel=tol)


def test_noise_types_share_the_variance_and_differ_in_their_tails() -> None:
    """uniform U(-1,1), gaussian N(0,1)/sqrt(3), laplace Laplace(0, 1/sqrt(6)): all variance 1/3, and the
    fourth moment tells them apart (kurtosis 1.8, 3, 6), so a wrong distribution cannot pass."""
    torch.manual_seed(0)
    embeds = torch.zeros(2, 50, 1000)
    real = torch.ones(2, 50)
    real[1, 10:] = 0
    for noise_type, kurtosis in KURTOSIS.items():
        noise = neftune_noise(embeds, real, ALPHA, noise_type)
        for row, length in ((0, 50), (1, 10)):
            _check_variance(noise[row, :length], length, 1000, noise_type)
        assert noise[1, 10:].abs().max().item() == 0.0
        eps = noise[0] / (ALPHA / math.sqrt(50 * 1000))
        measured = eps.pow(4).mean().item() / eps.pow(2).mean().item() ** 2
        assert measured == pytest.approx(kurtosis, rel=0.1)
        assert torch.isfinite(noise).all()
    with pytest.raises(ValueError, match="laplace"):
        neftune_noise(embeds, real, ALPHA, "cauchy")  # type: ignore[arg-type]


def _measured_layer_noise(
    model: torch.nn.Module, layers: tuple[int, ...], noise_type: str, pad: int | None = None, **inputs: torch.Tensor
) -> dict[int, torch.Tensor]:
    """For each hidden state in ``layers``: its value after NEFTune's hook minus before it, over DRAWS
    forwards, [DRAWS, B, T, d]. A capture hook registered before attaching sees the clean output, one
    registered after sees the noisy one, whatever the noise upstream or the dropout."""
    modules = {k: model.get_input_embeddings() if k == 0 else model.transformer.h[k - 1] for k in layers}
    before: dict[int, list[torch.Tensor]] = {k: [] for k in layers}
    after: dict[int, list[torch.Tensor]] = {k: [] for k in layers}

    def capture(store: list[torch.Tensor]):
        return lambda m, a, out: store.append((out[0] if isinstance(out, tuple) else out).detach().clone())

    handles = [modules[k].register_forward_hook(capture(before[k])) for k in layers]
    hook = attach_neftune(model, ALPHA, noise_type, pad_token_id=pad, layers=layers)
    handles += [modules[k].register_forward_hook(capture(after[k])) for k in layers]
    try:
        with torch.no_grad():
            for _ in range(DRAWS):
                model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
        hook.remove()
    return {k: torch.stack(after[k]) - torch.stack(before[k]) for k in layers}


@pytest.mark.parametrize("noise_type", ["uniform", "gaussian", "laplace"])
@pytest.mark.parametrize("layers", [(0,), (1, 2)])
def test_variance_per_document_and_clean_padding_on_every_layer(model, noise_type, layers) -> None:
    """Padded rows (attention mask) and a packed batch (no mask, pad-id tail): every document's measured
    variance is (alpha/sqrt(L d))^2/3 at each noised hidden state (0: embeddings; k: block k's output)."""
    from sftlab.data.packing import SFTCollator

    d = model.config.n_embd
    ids = torch.randint(2, 500, (2, 24))
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[0, 6:] = 0
    padded = _measured_layer_noise(model, layers, noise_type, input_ids=ids, attention_mask=mask)
    pad = 1
    rows = [
        {"input_ids": list(range(10, 22)), "labels": list(range(10, 22)), "position_ids": list(range(12))},
        {"input_ids": list(range(30, 50)), "labels": list(range(30, 50)),
         "position_ids": list(range(8)) + list(range(12))},
    ]
    batch = SFTCollator(pad)(rows)
    packed = _measured_layer_noise(
        model, layers, noise_type, pad=pad, input_ids=batch["input_ids"], position_ids=batch["position_ids"]
    )
    for k in layers:
        _check_variance(padded[k][:, 0, :6], 6, d, noise_type)
        _check_variance(padded[k][:, 1], 24, d, noise_type)
        assert padded[k][:, 0, 6:].abs().max().item() == 0.0
        _check_variance(packed[k][:, 0, :12], 12, d, noise_type)
        assert packed[k][:, 0, 12:].abs().max().item() == 0.0  # row 0's 8-token pad tail
        _check_variance(packed[k][:, 1, :8], 8, d, noise_type)
        _check_variance(packed[k][:, 1, 8:], 12, d, noise_type)


def test_unnoised_layers_stay_clean_and_out_of_range_layers_are_refused(model) -> None:
    """Noise on block 2 only: with the same dropout draws, the embeddings and block 1 come out as without
    NEFTune, block 2 does not."""
    ids = torch.randint(2, 500, (1, 10))
    watched = [model.get_input_embeddings(), model.transformer.h[0], model.transformer.h[1]]

    def outputs() -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []
        handles = [m.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone())) for m in watched]
        torch.manual_seed(1)
        with torch.no_grad():
            model(input_ids=ids)
        for handle in handles:
            handle.remove()
        return seen

    plain = outputs()
    hook = attach_neftune(model, ALPHA, layers=(2,))
    assert hook.modules == [model.transformer.h[1]]
    noised = outputs()
    assert torch.equal(plain[0], noised[0]) and torch.equal(plain[1], noised[1])
    assert not torch.equal(plain[2], noised[2])
    with pytest.raises(ValueError, match="out of range"):
        attach_neftune(model, ALPHA, layers=(3,))


def test_config_takes_the_variants(tmp_path) -> None:
    from sftlab.config import TrainConfig

    cfg = TrainConfig(model_name_or_path="m", train_file="x.json", neftune_noise_alpha=5,
                      neftune_noise_type="laplace", neftune_layers=[0, 3])
    assert cfg.neftune_layers == [0, 3]
    with pytest.raises(ValueError):
        TrainConfig(model_name_or_path="m", train_file="x.json", neftune_layers=[-1])
    with pytest.raises(ValueError):
        TrainConfig(model_name_or_path="m", train_file="x.json", neftune_layers=[])


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


def test_train_refuses_a_layer_the_model_lacks(tiny_model_dir, shared_data, tmp_path) -> None:
    import json

    from sftlab.config import TrainConfig
    from sftlab.errors import UserError
    from sftlab.recipes.train import prepare_train

    data = tmp_path / "sft.json"
    data.write_text(json.dumps(json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[:8]))
    cfg = TrainConfig(model_name_or_path=str(tiny_model_dir), train_file=[str(data)], output_dir=str(tmp_path / "run"),
                      max_length=128, max_steps=1, save_strategy="no", neftune_noise_alpha=5, neftune_layers=[0, 5])
    with pytest.raises(UserError, match="neftune_layers: 5 is out of range; this model has hidden states 0..2"):
        prepare_train(cfg)
