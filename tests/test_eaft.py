"""EAFT (Diao et al. 2026): against a hand computation on a 3-token vocabulary, and against the official code's
formula (PRIS-CV/EAFT's LLaMA-Factory fork, ``_eaft_cross_entropy``, written out here) on random logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sftlab.config import TrainConfig, build_config
from sftlab.errors import UserError
from sftlab.models.tokens import IGNORE_INDEX
from sftlab.train.losses import cross_entropy, eaft_loss
from sftlab.train.remedies.registry import build_loss, describe_remedies


def _entropy(ps: list[float]) -> float:
    return -sum(p * math.log(p) for p in ps)


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_eaft_matches_hand_computation_on_three_tokens() -> None:
    """Two targets: logits (0, 0, ln 2) with target 2 (p = 1/4, 1/4, 1/2) and uniform logits with target 0.

    With k = 2 the first token's top-2 distribution is (2/3, 1/3); with k = 3 it is p itself. The second
    token's top-k distribution is uniform, entropy ln k, so its normalised weight is 1 under ln k.
    """
    z1, z2 = [0.0, 0.0, math.log(2.0)], [0.0, 0.0, 0.0]
    logits = torch.tensor([[z1, z2, [0.0, 0.0, 0.0]]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, 2, 0]])
    nll1, nll2 = math.log(2.0), math.log(3.0)
    for k, alpha, norm in [(3, 1.0, None), (2, 2.0, None), (3, 0.5, 3.0), (2, 1.0, 3.0)]:
        top1 = _softmax(sorted(z1, reverse=True)[:k])
        c = math.log(k) if norm is None else norm
        w1 = (_entropy(top1) / c) ** alpha
        w2 = (math.log(k) / c) ** alpha
        expected = (w1 * nll1 + w2 * nll2) / 2
        got = eaft_loss(logits, labels, alpha=alpha, k=k, entropy_norm=norm)
        assert got.item() == pytest.approx(expected, rel=1e-6), (k, alpha, norm)
    # k = 3, alpha 1, ln 3: w1 = 1.5 ln 2 / ln 3 by hand
    assert eaft_loss(logits, labels, k=3, entropy_norm=None).item() == pytest.approx(
        (1.5 * math.log(2) / math.log(3) * math.log(2) + math.log(3)) / 2, rel=1e-6)
    # The weight is detached: the gradient is w_t * (softmax(z_t) - onehot(y_t)) / N.
    eaft_loss(logits, labels, alpha=1.0, k=2, entropy_norm=None).backward()
    w1 = _entropy([2 / 3, 1 / 3]) / math.log(2)
    expected_grad = [w1 * (p - (i == 2)) / 2 for i, p in enumerate([0.25, 0.25, 0.5])]
    assert logits.grad[0, 0].tolist() == pytest.approx(expected_grad, rel=1e-6)
    assert logits.grad[0, 1].tolist() == pytest.approx([(1 / 3 - 1) / 2, 1 / 6, 1 / 6], rel=1e-6)
    assert logits.grad[0, 2].abs().sum().item() == 0  # the last position predicts nothing


def _official_eaft(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | None,
                   alpha: float) -> torch.Tensor:
    """The official code's loss, from its formula: labels padded by one and shifted; per-token cross-entropy;
    under no_grad, top-20 logits, their log-softmax, entropy / 3.0, to the power alpha; sum / num_items_in_batch
    (or the mean over target tokens)."""
    vocab = logits.size(-1)
    logits = logits.float().view(-1, vocab)
    target = F.pad(labels, (0, 1), value=-100)[..., 1:].reshape(-1)
    per_token = F.cross_entropy(logits, target, ignore_index=-100, reduction="none")
    valid = target != -100
    with torch.no_grad():
        top = torch.topk(logits[valid].detach(), k=20, dim=-1).values
        log_probs = top - torch.logsumexp(top, dim=-1, keepdim=True)
        weight = torch.pow(-(log_probs.exp() * log_probs).sum(-1) / 3.0, alpha)
    weighted = per_token[valid] * weight
    return weighted.sum() / num_items_in_batch if num_items_in_batch is not None else weighted.mean()


@pytest.mark.parametrize("alpha", [1.0, 2.0, 0.5])
def test_eaft_equals_the_official_formula_on_random_logits(alpha: float) -> None:
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 7, 50)).requires_grad_(True)
    labels = torch.randint(0, 50, (3, 7))
    labels[0, :3] = IGNORE_INDEX
    labels[2, 5:] = IGNORE_INDEX
    for n in (None, 40):
        ours = eaft_loss(logits, labels, n, alpha=alpha)  # the defaults: k 20, divided by 3.0
        (grad_ours,) = torch.autograd.grad(ours, logits)
        ref = _official_eaft(logits, labels, n, alpha)
        (grad_ref,) = torch.autograd.grad(ref, logits)
        assert ours.item() == pytest.approx(ref.item(), abs=1e-6)
        assert torch.allclose(grad_ours, grad_ref, atol=1e-6)
        assert not torch.allclose(ours, cross_entropy(logits, labels, n))  # the weights do act


def test_eaft_from_config() -> None:
    cfg = TrainConfig(model_name_or_path="m", train_file="t.jsonl", loss="eaft", eaft={"alpha": 2.0, "k": 5})
    logits, labels = torch.randn(2, 6, 30), torch.randint(0, 30, (2, 6))
    assert build_loss(cfg)(logits, labels).item() == pytest.approx(eaft_loss(logits, labels, alpha=2.0, k=5).item())
    assert any(p.startswith("loss eaft") for p in describe_remedies(cfg))
    assert cfg.eaft.entropy_norm == 3.0  # the official code's normaliser by default
    with pytest.raises(UserError, match="did you mean 'alpha'"):
        build_config(TrainConfig, {"model_name_or_path": "m", "train_file": "t", "loss": "eaft", "eaft": {"alpah": 1}})
    with pytest.raises(UserError, match="eaft.k"):
        build_config(TrainConfig, {"model_name_or_path": "m", "train_file": "t", "eaft": {"k": 1}})
