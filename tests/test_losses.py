"""Token losses: GEM against a hand computation and against cross-entropy's gradient; label smoothing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sftlab.config import TrainConfig
from sftlab.train.losses import IGNORE_INDEX, build_loss, cross_entropy, gem_loss

# One target token: position 0 of a 2-position sequence predicts label[1] = 0 over a 3-token vocabulary.
Z = [1.0, 2.0, 0.5]
Y = 0


def _one_position(z: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.zeros(1, 2, 3, dtype=torch.float64)
    logits[0, 0] = torch.tensor(z, dtype=torch.float64)
    logits.requires_grad_(True)
    labels = torch.tensor([[IGNORE_INDEX, Y]])
    return logits, labels


def _hand_gem(z: list[float], y: int, beta: float, h: str) -> tuple[float, list[float]]:
    """The paper's formula with plain floats: value and gradient with respect to z."""
    lse = math.log(sum(math.exp(v) for v in z))
    logp = [v - lse for v in z]
    qs = [math.exp(v / beta) for v in z]
    q = [v / sum(qs) for v in qs]
    w = [1.0 if h == "linear" else 1.0 / (1.0 + math.exp(-0.01 * (z[v] - z[y]))) for v in range(3)]
    value = -sum(q[v] * w[v] * (logp[y] - logp[v]) for v in range(3))
    grad = [q[v] * w[v] for v in range(3)]
    grad[y] = -sum(q[v] * w[v] for v in range(3) if v != y)
    return value, grad


@pytest.mark.parametrize("h", ["linear", "logsigmoid"])
@pytest.mark.parametrize("beta", [0.7, 0.3])
def test_gem_matches_hand_computation_on_three_tokens(h: str, beta: float) -> None:
    logits, labels = _one_position(Z)
    loss = gem_loss(logits, labels, beta=beta, h=h)
    loss.backward()
    value, grad = _hand_gem(Z, Y, beta, h)
    assert loss.item() == pytest.approx(value, rel=1e-6)
    assert logits.grad[0, 0].tolist() == pytest.approx(grad, rel=1e-6)
    assert logits.grad[0, 1].abs().sum() == 0  # the position with no target gets nothing


def test_gem_hand_values_by_hand() -> None:
    """Pin the hand helper itself to numbers worked out on paper for z = (1, 2, 0.5), y = 0, beta = 1.

    p = softmax(z) = (0.2312, 0.6285, 0.1402); log p_y - log p_v = z_y - z_v = (0, -1, 0.5);
    L = -(0.6285 * -1 + 0.1402 * 0.5) = 0.5584; dL/dz = (p - onehot(y)) = (-0.7688, 0.6285, 0.1402).
    """
    value, grad = _hand_gem(Z, Y, 1.0, "linear")
    assert value == pytest.approx(0.5584, abs=1e-4)
    assert grad == pytest.approx([-0.7688, 0.6285, 0.1402], abs=1e-4)


def _random_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(3, 6, 17, generator=g)).requires_grad_(True)
    labels = torch.randint(0, 17, (3, 6), generator=g)
    labels[0, :3] = IGNORE_INDEX
    labels[2, 4] = IGNORE_INDEX
    return logits, labels


def test_gem_linear_beta_one_has_exactly_cross_entropys_gradient() -> None:
    """h=linear, beta=1: q = p, so dL/dz = p - onehot(y) at every target position, as for cross-entropy.

    Equal gradients with respect to the logits mean equal gradients with respect to every parameter.
    """
    logits, labels = _random_batch()
    (g_gem,) = torch.autograd.grad(gem_loss(logits, labels, beta=1.0, h="linear"), logits)
    (g_ce,) = torch.autograd.grad(cross_entropy(logits, labels), logits)
    torch.testing.assert_close(g_gem, g_ce, rtol=1e-5, atol=1e-7)  # both run in float32


def test_gem_gradient_tends_to_cross_entropys_as_beta_tends_to_one() -> None:
    """The gap to cross-entropy's gradient shrinks as beta -> 1 (it is q - p, continuous in beta)."""
    logits, labels = _random_batch(1)
    (g_ce,) = torch.autograd.grad(cross_entropy(logits, labels), logits)
    gaps = []
    for beta in (0.5, 0.9, 0.99, 0.999):
        (g,) = torch.autograd.grad(gem_loss(logits, labels, beta=beta), logits)
        gaps.append((g - g_ce).norm().item())
    assert all(a > b for a, b in zip(gaps, gaps[1:]))
    assert gaps[-1] < 1e-2 * gaps[0]


def test_gem_equals_reference_log_softmax_form() -> None:
    """The logits-difference shortcut equals the reference code's log-softmax form, value and gradient."""
    logits, labels = _random_batch(2)
    for h in ("linear", "logsigmoid"):
        ours = gem_loss(logits, labels, beta=0.7, h=h)
        z = logits[:, :-1].reshape(-1, 17)
        y = labels[:, 1:].reshape(-1)
        keep = y != IGNORE_INDEX
        z, y = z[keep], y[keep]
        logp = F.log_softmax(z, -1)
        q = F.softmax(z / 0.7, -1).detach()
        zy = z.gather(-1, y[:, None])
        w = torch.ones_like(z) if h == "linear" else torch.sigmoid(0.01 * (z - zy)).detach()
        ref = -(q * w * (logp.gather(-1, y[:, None]) - logp)).sum(-1).mean()
        (g1,) = torch.autograd.grad(ours, logits)
        (g2,) = torch.autograd.grad(ref, logits)
        torch.testing.assert_close(ours, ref)
        torch.testing.assert_close(g1, g2)


def test_gem_normalises_by_num_items_in_batch() -> None:
    logits, labels = _random_batch(3)
    n_targets = int((labels[:, 1:] != IGNORE_INDEX).sum())
    mean = gem_loss(logits, labels)
    total = gem_loss(logits, labels, num_items_in_batch=1)
    assert total.item() == pytest.approx(mean.item() * n_targets)
    assert gem_loss(logits, labels, num_items_in_batch=2 * n_targets).item() == pytest.approx(mean.item() / 2)


def test_label_smoothing_matches_hand_formula() -> None:
    """(1 - eps) * -log p_y + eps * mean_v(-log p_v), per target token."""
    logits, labels = _one_position(Z)
    eps = 0.2
    lse = math.log(sum(math.exp(v) for v in Z))
    nll = [lse - v for v in Z]
    expected = (1 - eps) * nll[Y] + eps * sum(nll) / 3
    assert cross_entropy(logits, labels, label_smoothing=eps).item() == pytest.approx(expected)


def test_build_loss_picks_gem_with_its_settings() -> None:
    cfg = TrainConfig(model_name_or_path="m", train_file="t.jsonl", loss="gem", gem={"beta": 0.4, "h": "logsigmoid"})
    logits, labels = _random_batch(4)
    assert build_loss(cfg)(logits, labels).item() == pytest.approx(
        gem_loss(logits, labels, beta=0.4, h="logsigmoid").item()
    )
    ce_cfg = TrainConfig(model_name_or_path="m", train_file="t.jsonl")
    assert build_loss(ce_cfg)(logits, labels).item() == pytest.approx(cross_entropy(logits, labels).item())
