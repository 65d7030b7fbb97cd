"""Adversarial embedding perturbation: FreeLB's ascent steps and mean gradient, SMART's smoothness term,
both against hand-computed projected gradient steps; ``steps: 0`` is plain training bit for bit; both
compose with LoRA, NEFTune and KL-to-base in a real `sftlab train` trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from transformers import AutoModelForCausalLM

from sftlab.config import TrainConfig
from sftlab.train.remedies.adversarial import AdversarialSettings
from sftlab.recipes.train import prepare_train
from sftlab.train.adversarial import FreeLB, SmartSmoothness, symmetric_kl
from sftlab.train.losses import cross_entropy

PAD = 1


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def llama(tiny_llama_dir: Path) -> torch.nn.Module:
    """The tiny Llama has no dropout, so repeated forwards are identical and gradients comparable."""
    return AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)).train()


def _padded_batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(2, 500, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[0, 7:] = 0  # row 0: 7 real tokens, then padding
    ids[0, 7:] = PAD
    labels = ids.clone()
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _packed_batch() -> dict[str, torch.Tensor]:
    """One packed row as the collator sends it: documents of 5 and 9 tokens, a 4-token pad tail, no mask."""
    ids = torch.randint(2, 500, (1, 18))
    ids[0, 14:] = PAD
    labels = ids.clone()
    labels[0, 14:] = -100
    position_ids = torch.cat([torch.arange(5), torch.arange(9), torch.arange(4)])[None]
    return {"input_ids": ids, "position_ids": position_ids, "labels": labels}


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


def _logits_at(model: torch.nn.Module, batch: dict[str, torch.Tensor], delta: torch.Tensor) -> torch.Tensor:
    """The logits with ``delta`` added to the input embeddings by hand (no adversary active)."""
    inputs = {k: v for k, v in _model_inputs(batch).items() if k != "input_ids"}
    embeds = model.get_input_embeddings()(batch["input_ids"]) + delta
    return model(inputs_embeds=embeds, **inputs).logits


def _loss_at(model: torch.nn.Module, batch: dict[str, torch.Tensor], delta: torch.Tensor) -> torch.Tensor:
    return cross_entropy(_logits_at(model, batch, delta), batch["labels"])


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss, params, allow_unused=True))


def _settings(**kw) -> AdversarialSettings:
    return AdversarialSettings(**{"steps": 1, "step_size": 0.5, "epsilon": 10.0, **kw})


def _freelb_step(model: torch.nn.Module, adv: FreeLB, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One micro-batch as SFTLabTrainer runs it: each visit's loss / passes, backward, detached loss."""

    def step() -> torch.Tensor:
        loss = cross_entropy(model(**_model_inputs(batch)).logits, batch["labels"]) / adv.passes
        loss.backward()
        return loss.detach()

    return adv.training_step(step)


def _doc_masks(batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """[B, T] bool masks, one per document, padding in none."""
    if "attention_mask" in batch:
        mask = batch["attention_mask"].bool()
        return [torch.zeros_like(mask).index_fill_(0, torch.tensor([r]), True) & mask for r in range(mask.size(0))]
    docs = [torch.zeros(1, 18, dtype=torch.bool) for _ in range(2)]
    docs[0][0, :5] = True
    docs[1][0, 5:14] = True
    return docs


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("epsilon", [10.0, 0.3])  # the step (eta 0.5) inside the ball, and projected onto it
def test_freelb_l2_step_and_gradient_match_a_hand_computed_projected_step(llama, layout, epsilon) -> None:
    batch = _padded_batch() if layout == "padded" else _packed_batch()
    emb = llama.get_input_embeddings()
    zero = torch.zeros(*batch["input_ids"].shape, emb.embedding_dim)

    # By hand: g = dL/de at the clean embeddings, delta_1 = P(eta * g / ||g||_D) per document.
    e = zero.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_loss_at(llama, batch, e), e)
    expected = torch.zeros_like(zero)
    for doc in _doc_masks(batch):
        step = 0.5 * g[doc] / g[doc].norm()
        expected[doc] = step * min(1.0, epsilon / step.norm().item())
    grads_clean = _grads(llama, _loss_at(llama, batch, zero))
    grads_adv = _grads(llama, _loss_at(llama, batch, expected))

    adv = FreeLB(llama, _settings(epsilon=epsilon), pad_token_id=PAD)
    llama.zero_grad()
    total = _freelb_step(llama, adv, batch)
    start, delta = adv.perturbation.visited
    assert start.abs().max().item() == 0.0
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-7)
    real = torch.stack(_doc_masks(batch)).any(0)
    assert delta[~real].abs().max().item() == 0.0  # padding stays clean
    for doc in _doc_masks(batch):
        assert delta[doc].norm().item() == pytest.approx(min(0.5, epsilon), rel=1e-5)
    # The parameter gradient is the mean of the two visits' gradients; the loss their mean.
    params = [p for p in llama.parameters() if p.requires_grad]
    for p, gc, ga in zip(params, grads_clean, grads_adv):
        torch.testing.assert_close(p.grad, 0.5 * (gc + ga), rtol=1e-4, atol=1e-7)
    with torch.no_grad():
        mean_loss = 0.5 * (_loss_at(llama, batch, zero) + _loss_at(llama, batch, expected))
    assert total.item() == pytest.approx(mean_loss.item(), rel=1e-5)
    adv.remove()
    assert not emb._forward_hooks


def test_freelb_linf_step_is_a_clipped_sign_step(llama) -> None:
    batch = _padded_batch()
    e = torch.zeros(2, 16, llama.config.hidden_size, requires_grad=True)
    (g,) = torch.autograd.grad(_loss_at(llama, batch, e), e)
    real = batch["attention_mask"].unsqueeze(-1).float()
    adv = FreeLB(llama, _settings(norm="linf", step_size=0.02, epsilon=0.01), pad_token_id=PAD)
    _freelb_step(llama, adv, batch)
    delta = adv.perturbation.visited[1]
    torch.testing.assert_close(delta, (0.02 * g.sign()).clamp(-0.01, 0.01) * real)


def test_two_steps_move_from_the_projected_first(llama) -> None:
    """delta_2 = P(delta_1 + eta g_1/||g_1||) with g_1 taken at e + delta_1, and a random start is projected."""
    batch = _padded_batch()
    adv = FreeLB(llama, _settings(steps=2, epsilon=0.6, init=5.0), pad_token_id=PAD)
    _freelb_step(llama, adv, batch)
    d0, d1, d2 = adv.perturbation.visited
    docs = _doc_masks(batch)
    for doc in docs:
        assert 0 < d0[doc].norm().item() <= 0.6 * (1 + 1e-5)  # init 5 draws beyond the ball: projected
    e = d1.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(_loss_at(llama, batch, e), e)
    expected = torch.zeros_like(d1)
    for doc in docs:
        moved = d1[doc] + 0.5 * g1[doc] / g1[doc].norm()
        expected[doc] = moved * min(1.0, 0.6 / moved.norm().item())
    torch.testing.assert_close(d2, expected, rtol=1e-4, atol=1e-6)


def test_symmetric_kl_by_hand() -> None:
    p, q = torch.randn(5, 11), torch.randn(5, 11)
    lp, lq = F.log_softmax(p, -1), F.log_softmax(q, -1)
    by_hand = ((lp.exp() * (lp - lq)).sum(-1) + (lq.exp() * (lq - lp)).sum(-1)).mean()
    assert symmetric_kl(p, q).item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert symmetric_kl(p, p).item() == pytest.approx(0.0, abs=1e-7)


def test_smart_penalty_is_the_smoothness_term_at_the_hand_computed_step(llama) -> None:
    batch = _padded_batch()
    labels = batch["labels"]
    scored = labels[:, 1:] != -100
    smart = SmartSmoothness(llama, _settings(method="smart", init=1.0, smoothness_weight=3.0), pad_token_id=PAD)
    outputs = llama(**_model_inputs(batch))
    penalty = smart.penalty(llama, batch, outputs)
    d0, d1 = smart.perturbation.visited
    clean_logits = outputs.logits[:, :-1][scored].detach()
    # By hand: the ascent on l_s from the random start, then the term at delta_1.
    e = d0.clone().requires_grad_(True)
    term = symmetric_kl(_logits_at(llama, batch, e)[:, :-1][scored], clean_logits)
    (g,) = torch.autograd.grad(term, e)
    expected = torch.zeros_like(d0)
    for doc in _doc_masks(batch):
        moved = d0[doc] + 0.5 * g[doc] / g[doc].norm()
        expected[doc] = moved * min(1.0, 10.0 / moved.norm().item())
    torch.testing.assert_close(d1, expected, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        at_d1 = symmetric_kl(_logits_at(llama, batch, d1)[:, :-1][scored], clean_logits)
    assert penalty.item() == pytest.approx(3.0 * at_d1.item(), rel=1e-4)
    assert penalty.item() > 0
    penalty.backward()  # the gradient reaches the weights through both distributions
    assert all(p.grad is not None for p in llama.parameters() if p.requires_grad)


def test_config_rejects_inconsistent_settings() -> None:
    with pytest.raises(ValidationError, match="init > 0"):
        AdversarialSettings(method="smart", step_size=0.1, epsilon=1.0)
    with pytest.raises(ValidationError, match="smart only"):
        AdversarialSettings(step_size=0.1, epsilon=1.0, smoothness_weight=2.0)
    with pytest.raises(ValidationError):
        AdversarialSettings(steps=-1, step_size=0.1, epsilon=1.0)


# --------------------------------------------------------------------------------------------------
# Through the trainer `sftlab train` builds


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory, shared_data) -> Path:
    records = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[:24]
    path = tmp_path_factory.mktemp("adv_data") / "sft.json"
    path.write_text(json.dumps(records))
    return path


def _train(model_dir: Path, sft_file: Path, run: Path, **extra) -> object:
    cfg = TrainConfig(
        model_name_or_path=str(model_dir), train_file=[str(sft_file)], output_dir=str(run), packing=True,
        max_length=128, per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=2,
        learning_rate=1e-2, logging_steps=1, save_strategy="no", seed=3, resume="never", **extra,
    )
    trainer = prepare_train(cfg).trainer
    trainer.train()
    return trainer


def test_zero_steps_is_bit_identical_to_plain_training(tiny_model_dir, sft_file, tmp_path) -> None:
    """GPT-2 with dropout: the same seeds, the same draws, the same weights, through FreeLB's path."""
    plain = _train(tiny_model_dir, sft_file, tmp_path / "plain")
    zero = _train(tiny_model_dir, sft_file, tmp_path / "zero",
                  adversarial={"steps": 0, "step_size": 0.1, "epsilon": 1.0})
    assert isinstance(zero.adversary, FreeLB) and len(zero.adversary.perturbation.visited) == 1
    one = _train(tiny_model_dir, sft_file, tmp_path / "one",
                 adversarial={"steps": 1, "step_size": 0.1, "epsilon": 1.0})
    plain_w, zero_w, one_w = (dict(t.model.named_parameters()) for t in (plain, zero, one))
    assert all(torch.equal(plain_w[n], zero_w[n]) for n in plain_w)
    assert not all(torch.equal(plain_w[n], one_w[n]) for n in plain_w)  # an ascent step does change training
    logs = [h for h in plain.state.log_history if "loss" in h]
    zero_logs = [h for h in zero.state.log_history if "loss" in h]
    assert [h["loss"] for h in logs] == [h["loss"] for h in zero_logs]


@pytest.mark.parametrize("method", ["freelb", "smart"])
def test_composes_with_lora_neftune_and_kl(tiny_model_dir, sft_file, tmp_path, method) -> None:
    adversarial = {"method": method, "steps": 2, "step_size": 0.05, "epsilon": 0.1, "init": 0.01}
    trainer = _train(
        tiny_model_dir, sft_file, tmp_path / method, method="lora",
        lora={"r": 4, "alpha": 8, "target_modules": ["c_attn"]}, neftune_noise_alpha=5.0,
        kl_to_base={"beta": 0.5}, adversarial=adversarial,
    )
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    assert all(0 < h["adversarial/delta_norm"] <= 0.1 * (1 + 1e-5) for h in logs)
    assert all(h["neftune/noised_forwards"] > 0 and "loss/kl_to_base" in h for h in logs)
    if method == "smart":
        assert all(h["loss/smart"] > 0 for h in logs)
        assert trainer.adversary is None
    else:
        # Each micro-batch visited three perturbations; the logged task loss is their mean, near the loss.
        assert len(trainer.adversary.perturbation.visited) == 3
        assert all(h["loss/task"] == pytest.approx(h["loss"] - h["loss/kl_to_base"], rel=0.05) for h in logs)
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
