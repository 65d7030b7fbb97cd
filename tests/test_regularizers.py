"""L2-SP, EWC and KL-to-base: zero at the start, values and gradients against hand formulas."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from sftlab.config import TrainConfig
from sftlab.errors import UserError
from sftlab.train.losses import cross_entropy
from sftlab.train.regularizers import (
    EWC,
    FISHER_FILE,
    L2SP,
    REPLAY_MASK_KEY,
    Anchor,
    KLToBase,
    diagonal_fisher,
    load_or_compute_fisher,
)
from sftlab.train.remedies.base import RemedyContext
from sftlab.train.remedies.registry import attach_remedies

NO_INPUTS: dict[str, torch.Tensor] = {}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _load(model_dir: Path, dropout: float = 0.0) -> torch.nn.Module:
    """The tiny model in train mode; dropout off so that its forward is deterministic."""
    return AutoModelForCausalLM.from_pretrained(
        str(model_dir), resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout
    ).train()


def _lora(model: torch.nn.Module) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True, lora_dropout=0.0))


def _perturb(params: list[torch.Tensor], scale: float = 0.01) -> None:
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn_like(p))


def _grads(penalty: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(penalty, params))


def test_l2sp_zero_at_start_then_matches_hand_formula(tiny_model_dir: Path) -> None:
    model = _load(tiny_model_dir)
    anchor = Anchor(model)
    reg = L2SP(anchor, lam=0.3)
    start = reg.penalty(model, NO_INPUTS, None)
    assert start.item() == 0.0
    assert all(g.abs().max() == 0 for g in _grads(start, anchor.params))

    _perturb(anchor.params)
    pen = reg.penalty(model, NO_INPUTS, None)
    deltas = [(p - s).detach().double() for p, s in zip(anchor.params, anchor.start)]
    hand = 0.5 * 0.3 * sum(d.pow(2).sum() for d in deltas)
    assert pen.item() == pytest.approx(hand.item(), rel=1e-5)
    for g, d in zip(_grads(pen, anchor.params), deltas):  # d/dtheta = lambda * (theta - theta_0)
        torch.testing.assert_close(g.double(), 0.3 * d, rtol=1e-4, atol=1e-9)


def _sequences() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(2, 500, (n,), generator=g).tolist() for n in (12, 7, 20, 1)]


def test_diagonal_fisher_is_the_mean_of_per_sample_squared_gradients(tiny_model_dir: Path) -> None:
    model = _load(tiny_model_dir, dropout=0.1)
    fisher = diagonal_fisher(model, _sequences())
    assert model.training  # mode restored
    model.eval()  # the Fisher is taken without dropout
    named = dict(model.named_parameters())
    expected = {n: torch.zeros_like(p) for n, p in named.items()}
    for seq in _sequences()[:3]:  # the 1-token sequence has no target and is skipped
        model.zero_grad()
        ids = torch.tensor([seq])
        cross_entropy(model(input_ids=ids).logits, ids).backward()
        for n, p in named.items():
            expected[n] += p.grad.pow(2) / 3
    assert set(fisher) == set(named)
    for n in named:
        torch.testing.assert_close(fisher[n], expected[n], rtol=1e-4, atol=1e-12)
    assert sum(f.sum() for f in fisher.values()) > 0


def test_ewc_zero_at_start_then_matches_hand_formula(tiny_model_dir: Path) -> None:
    model = _load(tiny_model_dir)
    anchor = Anchor(model)
    fisher = {n: torch.rand_like(p) for n, p in zip(anchor.names, anchor.params)}
    reg = EWC(anchor, fisher, lam=2.0)
    start = reg.penalty(model, NO_INPUTS, None)
    assert start.item() == 0.0
    assert all(g.abs().max() == 0 for g in _grads(start, anchor.params))

    _perturb(anchor.params)
    pen = reg.penalty(model, NO_INPUTS, None)
    deltas = [(p - s).detach().double() for p, s in zip(anchor.params, anchor.start)]
    fs = [fisher[n].double() for n in anchor.names]
    hand = 0.5 * 2.0 * sum((f * d.pow(2)).sum() for f, d in zip(fs, deltas))
    assert pen.item() == pytest.approx(hand.item(), rel=1e-5)
    for g, f, d in zip(_grads(pen, anchor.params), fs, deltas):  # d/dtheta = lambda * F * (theta - theta*)
        torch.testing.assert_close(g.double(), 2.0 * f * d, rtol=1e-4, atol=1e-9)


def test_weight_penalties_count_only_trainable_parameters(tiny_model_dir: Path) -> None:
    model = _lora(_load(tiny_model_dir))
    anchor = Anchor(model)
    assert anchor.names and all("lora_" in n for n in anchor.names)
    reg = L2SP(anchor, lam=1.0)
    assert reg.penalty(model, NO_INPUTS, None).item() == 0.0
    lora_b = [p for n, p in zip(anchor.names, anchor.params) if "lora_B" in n]
    _perturb(lora_b)
    expected = 0.5 * sum(p.detach().double().pow(2).sum() for p in lora_b)  # B starts at 0
    assert reg.penalty(model, NO_INPUTS, None).item() == pytest.approx(expected.item(), rel=1e-5)


def test_fisher_is_saved_and_reused_from_the_run_dir(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _load(tiny_model_dir)
    names = Anchor(model).names
    path = tmp_path / FISHER_FILE
    calls = []

    def sequences() -> list[list[int]]:
        calls.append(1)
        return _sequences()

    meta = {"fisher_corpus": "c.txt", "fisher_samples": "4"}
    first = load_or_compute_fisher(model, names, path, sequences, meta)
    assert path.is_file() and len(calls) == 1
    again = load_or_compute_fisher(model, names, path, sequences, meta)
    assert len(calls) == 1  # reused, not recomputed
    for n in names:
        assert torch.equal(first[n], again[n])
    load_or_compute_fisher(model, names, path, sequences, {**meta, "fisher_samples": "8"})
    assert len(calls) == 2  # another sample count: recomputed


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(2, 500, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 7:] = 0
    labels = ids.clone()
    labels[:, :4] = -100  # prompt
    labels[1, 7:] = -100  # padding
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _hand_kl(tuned: torch.Tensor, base: torch.Tensor, sel: torch.Tensor, direction: str) -> float:
    """sum_v p (log p - log q) per selected position, averaged, in float64."""
    lt = F.log_softmax(tuned[sel].double(), -1)
    lb = F.log_softmax(base[sel].double(), -1)
    if direction == "forward":  # KL(base || tuned)
        kl = (lb.exp() * (lb - lt)).sum(-1)
    else:  # KL(tuned || base)
        kl = (lt.exp() * (lt - lb)).sum(-1)
    return kl.mean().item()


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_kl_to_base_full_fine_tuning(tiny_model_dir: Path, direction: str) -> None:
    model = _load(tiny_model_dir)
    reg = KLToBase(model, beta=0.5, direction=direction, on="response")
    inputs = _batch()
    assert reg.penalty(model, inputs, model(**inputs)).item() == pytest.approx(0.0, abs=1e-6)

    _perturb([p for p in model.parameters()], scale=0.05)
    out = model(**inputs)
    pen = reg.penalty(model, inputs, out)
    base_logits = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))(**inputs).logits.detach()
    sel = torch.zeros(2, 10, dtype=torch.bool)
    sel[0, 3:9] = True  # targets at 4..9 are predicted from positions 3..8
    sel[1, 3:6] = True  # targets at 4..6
    assert pen.item() > 1e-4
    assert pen.item() == pytest.approx(0.5 * _hand_kl(out.logits.detach(), base_logits, sel, direction), rel=1e-4)
    pen.backward()
    assert model.transformer.wte.weight.grad is not None  # gradients reach the tuned model
    assert all(p.grad is None for p in reg.base_copy.parameters())


def test_kl_to_base_lora_uses_the_same_model_with_the_adapter_off(tiny_model_dir: Path) -> None:
    model = _lora(_load(tiny_model_dir, dropout=0.1))
    n_params = sum(p.numel() for p in model.parameters())
    reg = KLToBase(model, beta=1.0, direction="forward", on="all")
    assert reg.base_copy is None
    inputs = _batch()
    model.eval()  # a deterministic tuned forward: at the start the KL is then exactly the base's to itself
    assert reg.penalty(model, inputs, model(**inputs)).item() == pytest.approx(0.0, abs=1e-6)
    model.train()

    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    _perturb(lora_b, scale=0.5)
    with model.disable_adapter(), torch.no_grad():
        base_logits = model.eval()(**inputs).logits
    model.eval()
    out = model(**inputs)
    model.train()
    pen = reg.penalty(model, inputs, out)
    sel = inputs["attention_mask"].bool()
    assert pen.item() > 1e-4
    assert pen.item() == pytest.approx(_hand_kl(out.logits.detach(), base_logits, sel, "forward"), rel=1e-4)
    # The adapter is back on and every module is back in train mode after the base forward.
    assert all(m.training for m in model.modules())
    assert not torch.allclose(model(**inputs).logits, base_logits)
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_kl_positions_response_replay_all(tiny_model_dir: Path) -> None:
    model = _load(tiny_model_dir)
    inputs = _batch()
    inputs[REPLAY_MASK_KEY] = torch.tensor([[0] * 6 + [1] * 4, [0] * 10])
    response = KLToBase(model, 1.0, on="response").positions(inputs, (2, 10))
    replay = KLToBase(model, 1.0, on="replay").positions(inputs, (2, 10))
    every = KLToBase(model, 1.0, on="all").positions(inputs, (2, 10))
    assert response.int().tolist() == [[0, 0, 0, 1, 1, 1, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1, 0, 0, 0, 0]]
    assert replay.int().tolist() == [[0, 0, 0, 0, 0, 1, 1, 1, 1, 0], [0] * 10]
    assert every.int().tolist() == [[1] * 10, [1] * 7 + [0] * 3]
    row_marker = {**inputs, REPLAY_MASK_KEY: torch.tensor([0, 1])}
    assert KLToBase(model, 1.0, on="replay").positions(row_marker, (2, 10)).int().tolist() == [
        [0] * 10,
        [0, 0, 0, 1, 1, 1, 0, 0, 0, 0],
    ]


def _cfg(tmp_path: Path, **extra) -> TrainConfig:
    return TrainConfig(model_name_or_path="m", train_file="t.jsonl", output_dir=str(tmp_path), **extra)


def _penalties(cfg: TrainConfig, model: torch.nn.Module, run_dir: Path, tokenizer) -> list:
    """The penalties the remedies registry attaches for ``cfg`` (stage after_trainer), on a stand-in trainer."""
    trainer = SimpleNamespace(model=model, regularizers=[], log_sources=[], adversary=None,
                              is_deepspeed_enabled=False, add_callback=lambda callback: None)
    attach_remedies(RemedyContext(cfg, tokenizer, run_dir, trainer=trainer), "after_trainer")
    return trainer.regularizers


def test_penalties_from_config(tiny_model_dir: Path, tiny_tokenizer, tmp_path: Path) -> None:
    model = _load(tiny_model_dir)
    assert _penalties(_cfg(tmp_path), model, tmp_path, tiny_tokenizer) == []
    corpus = tmp_path / "ref.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog.\n\nAnother reference paragraph here.\n")
    cfg = _cfg(
        tmp_path,
        l2sp={"lambda": 0.1},
        ewc={"lambda": 5.0, "fisher_corpus": str(corpus), "fisher_samples": 8},
        kl_to_base={"beta": 0.2, "direction": "reverse"},
    )
    regs = _penalties(cfg, model, tmp_path, tiny_tokenizer)
    assert [r.name for r in regs] == ["l2sp", "ewc", "kl_to_base"]
    assert regs[0].anchor is regs[1].anchor  # one copy of the starting weights
    assert (tmp_path / FISHER_FILE).is_file()
    inputs = _batch()
    for reg in regs:
        assert reg.penalty(model, inputs, model(**inputs)).item() == pytest.approx(0.0, abs=1e-6)

    with pytest.raises(UserError, match="replay"):
        _penalties(_cfg(tmp_path, kl_to_base={"on": "replay"}), model, tmp_path, tiny_tokenizer)
    with pytest.raises(UserError, match="fisher_corpus"):
        _penalties(_cfg(tmp_path, ewc={"fisher_corpus": str(tmp_path / "missing.txt")}), model, tmp_path, tiny_tokenizer)


@pytest.mark.parametrize("on", ["response", "replay"])
def test_kl_on_scored_logits_equals_kl_on_full_logits(tiny_model_dir: Path, on: str) -> None:
    """The trainer's fast path (head on scored positions only) gives the same KL and the same gradient."""
    from sftlab.train.regularizers import SCORED_POSITIONS_KEY
    from sftlab.train.trainer import scored_positions_only

    model = _load(tiny_model_dir)
    reg = KLToBase(model, beta=0.3, on=on)
    assert reg.scored_logits_suffice and not KLToBase(model, 1.0, on="all").scored_logits_suffice
    _perturb(list(model.parameters()), scale=0.05)
    inputs = _batch()
    inputs[REPLAY_MASK_KEY] = torch.tensor([[0] * 6 + [1] * 4, [1] * 10])
    model_inputs = {k: v for k, v in inputs.items() if k not in ("labels", REPLAY_MASK_KEY)}

    full = reg.penalty(model, inputs, model(**model_inputs))
    (full_grad,) = torch.autograd.grad(full, [model.transformer.wte.weight])
    with scored_positions_only(model.get_output_embeddings(), inputs["labels"]):
        gathered = model(**model_inputs)
    scored = torch.zeros(2, 10, dtype=torch.bool)
    scored[:, :-1] = inputs["labels"][:, 1:] != -100
    assert gathered.logits.shape[:2] == (1, int(scored.sum()) + 1)
    fast = reg.penalty(model, {**inputs, SCORED_POSITIONS_KEY: scored}, gathered)
    (fast_grad,) = torch.autograd.grad(fast, [model.transformer.wte.weight])
    assert full.item() > 1e-4
    assert fast.item() == pytest.approx(full.item(), rel=1e-5)
    torch.testing.assert_close(fast_grad, full_grad, rtol=1e-4, atol=1e-7)


def test_kl_all_on_packed_rows_skips_the_padding_tail(tiny_model_dir: Path) -> None:
    """Packed batches have no attention mask; the collator's all-pad last document is not text."""
    from sftlab.train.neftune import packed_padding

    pad = 0
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, pad, pad], [5, 6, 7, 8, 9, 10, 11, pad]])
    # Row 0: documents of 3 and 3 tokens, then a 2-token pad tail; row 1: a document ending in the pad
    # id (pad = EOS) with nothing after it, which is real.
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 0, 1], [0, 1, 2, 3, 0, 1, 2, 3]])
    assert packed_padding(ids, pos, pad).int().tolist() == [[0] * 6 + [1, 1], [0] * 8]

    model = _load(tiny_model_dir)
    reg = KLToBase(model, 1.0, on="all", pad_token_id=pad)
    inputs = {"input_ids": ids, "position_ids": pos, "labels": ids.clone()}
    assert reg.positions(inputs, (2, 8)).int().tolist() == [[1] * 6 + [0, 0], [1] * 8]
    _perturb(list(model.parameters()), scale=0.05)
    out = model(input_ids=ids, position_ids=pos, use_cache=False)
    base_logits = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))(
        input_ids=ids, position_ids=pos, use_cache=False
    ).logits.detach()
    sel = reg.positions(inputs, (2, 8))
    expected = _hand_kl(out.logits.detach(), base_logits, sel, "forward")
    assert reg.penalty(model, inputs, out).item() == pytest.approx(expected, rel=1e-4)


def test_weight_penalties_leave_the_logits_alone(tiny_model_dir: Path) -> None:
    """L2-SP and EWC declare uses_logits = False, so the trainer keeps its scored-positions-only head."""
    model = _load(tiny_model_dir)
    anchor = Anchor(model)
    fisher = {n: torch.ones_like(p) for n, p in zip(anchor.names, anchor.params)}
    assert L2SP(anchor, 1.0).uses_logits is False
    assert EWC(anchor, fisher, 1.0).uses_logits is False


def test_kl_on_key_survives_yaml(tmp_path: Path) -> None:
    """PyYAML reads an unquoted `on:` key as True; the config still means kl_to_base.on."""
    from sftlab.config import dump_config, load_config

    path = tmp_path / "c.yaml"
    path.write_text("model_name_or_path: m\ntrain_file: t.jsonl\nkl_to_base:\n  beta: 0.2\n  on: all\n")
    cfg = load_config(TrainConfig, path)
    assert cfg.kl_to_base is not None and cfg.kl_to_base.on == "all"
    dump_config(cfg, tmp_path / "again.yaml")
    assert load_config(TrainConfig, tmp_path / "again.yaml") == cfg
