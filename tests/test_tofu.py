"""TOFU (Klypa & Cherednichenko 2026): against a hand computation on a 3-token vocabulary, and against the
official code's formula (github.com/rsklypa/TOFU, train/tofu_loss.py, written out here) on random logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sftlab.config import TrainConfig, build_config
from sftlab.errors import UserError
from sftlab.models.tokens import IGNORE_INDEX
from sftlab.train.losses import cross_entropy, tofu_loss
from sftlab.train.remedies.registry import build_loss, describe_remedies


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_tofu_matches_hand_computation_on_three_tokens() -> None:
    """One target, logits (1, 2, 0.5), target 0: value and gradient with plain floats."""
    z, y = [1.0, 2.0, 0.5], 0
    logits = torch.zeros(1, 2, 3, dtype=torch.float64)
    logits[0, 0] = torch.tensor(z, dtype=torch.float64)
    logits.requires_grad_(True)
    labels = torch.tensor([[IGNORE_INDEX, y]])
    for gamma, beta in [(3.0, 0.8), (1.0, 1.0), (2.0, 0.5)]:
        p = _softmax(z)[y]
        g = (1 - p) ** gamma - gamma * p * (1 - p) ** (gamma - 1) * math.log(p)
        tempered = _softmax([v / beta for v in z])
        expected = -g * beta * math.log(tempered[y])
        loss = tofu_loss(logits, labels, gamma=gamma, beta=beta)
        assert loss.item() == pytest.approx(expected, rel=1e-6), (gamma, beta)
        (grad,) = torch.autograd.grad(loss, logits)
        # g is detached: dL/dz = g * (softmax(z / beta) - onehot(y))
        assert grad[0, 0].tolist() == pytest.approx([g * (q - (i == y)) for i, q in enumerate(tempered)], rel=1e-6)
    # gamma 1, beta 1: g = 1 - p - p log p, times cross-entropy
    p = _softmax(z)[y]
    assert tofu_loss(logits, labels, gamma=1.0, beta=1.0).item() == pytest.approx(
        (1 - p - p * math.log(p)) * -math.log(p), rel=1e-6)


def _official_tofu(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | None,
                   gamma: float, beta: float) -> torch.Tensor:
    """The official loss from its formula: labels padded by one and shifted, full-length logits; p from the
    plain softmax and log p^beta from the softmax of logits / beta at the label; the focal term detached."""
    target = F.pad(labels, (0, 1), value=-100)[..., 1:].clone()
    mask = target != -100
    target[~mask] = 0
    log_pb = F.log_softmax(logits / beta, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    p = F.log_softmax(logits, dim=-1).exp().gather(-1, target.unsqueeze(-1)).squeeze(-1)
    term = ((1 - p) ** gamma - gamma * p * (1 - p) ** (gamma - 1) * torch.log(p)).detach()
    count = mask.sum() if num_items_in_batch is None else num_items_in_batch
    return (-term * log_pb * beta * mask).sum() / count


@pytest.mark.parametrize(("gamma", "beta"), [(3.0, 0.8), (2.0, 0.5), (1.5, 1.2)])
def test_tofu_equals_the_official_formula_on_random_logits(gamma: float, beta: float) -> None:
    torch.manual_seed(0)
    logits = (2 * torch.randn(3, 7, 50)).requires_grad_(True)
    labels = torch.randint(0, 50, (3, 7))
    labels[0, :3] = IGNORE_INDEX
    labels[2, 5:] = IGNORE_INDEX
    for n in (None, 40):
        ours = tofu_loss(logits, labels, n, gamma=gamma, beta=beta)
        (grad_ours,) = torch.autograd.grad(ours, logits)
        ref = _official_tofu(logits, labels, n, gamma, beta)
        (grad_ref,) = torch.autograd.grad(ref, logits)
        assert ours.item() == pytest.approx(ref.item(), abs=1e-6)
        assert torch.allclose(grad_ours, grad_ref, atol=1e-6)
        assert not torch.allclose(ours, cross_entropy(logits, labels, n))


def test_tofu_from_config() -> None:
    cfg = TrainConfig(model_name_or_path="m", train_file="t.jsonl", loss="tofu", tofu={"gamma": 2.0})
    logits, labels = torch.randn(2, 6, 30), torch.randint(0, 30, (2, 6))
    assert build_loss(cfg)(logits, labels).item() == pytest.approx(tofu_loss(logits, labels, gamma=2.0).item())
    assert (cfg.tofu.gamma, cfg.tofu.beta) == (2.0, 0.8)
    assert "loss tofu (gamma 2, beta 0.8)" in describe_remedies(cfg)
    with pytest.raises(UserError, match="did you mean 'gamma'"):
        build_config(TrainConfig, {"model_name_or_path": "m", "train_file": "t", "tofu": {"gama": 2}})
    with pytest.raises(UserError, match="tofu.gamma"):
        build_config(TrainConfig, {"model_name_or_path": "m", "train_file": "t", "tofu": {"gamma": 0.5}})
