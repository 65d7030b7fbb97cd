"""Token losses: GEM against a hand computation and against cross-entropy's gradient; label smoothing;
DFT against a hand computation and against TRL's `loss_type="dft"`."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sftlab.config import TrainConfig
from sftlab.models.tokens import IGNORE_INDEX
from sftlab.train.losses import cross_entropy, dft_loss, gem_loss
from sftlab.train.remedies.registry import build_loss

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


# --------------------------------------------------------------------------------------------------
# DFT


def _hand_dft(z: list[list[float]], y: list[int]) -> tuple[float, list[list[float]]]:
    """-mean_t p(y_t) log p(y_t) with plain floats; the gradient is p(y_t) * (softmax(z_t) - onehot(y_t)) / N."""
    value, grads = 0.0, []
    for zt, yt in zip(z, y):
        lse = math.log(sum(math.exp(v) for v in zt))
        p = [math.exp(v - lse) for v in zt]
        value += -p[yt] * math.log(p[yt])
        grads.append([p[yt] * (p[v] - (v == yt)) / len(y) for v in range(len(zt))])
    return value / len(y), grads


def test_dft_matches_hand_computation_on_three_tokens() -> None:
    """Three target tokens over a 3-token vocabulary, checked against numbers worked out on paper.

    Position 0: z = (1, 2, 0.5), y = 0: p_y = 0.2312, -p_y log p_y = 0.3385.
    Position 1: z = (0, 0, 0), y = 2: p_y = 1/3, -p_y log p_y = 0.3662.
    Position 2: z = (3, 0, 0), y = 0: p_y = 0.9094, -p_y log p_y = 0.0864.
    Mean: (0.3385 + 0.3662 + 0.0864) / 3 = 0.2637.
    """
    z = [[1.0, 2.0, 0.5], [0.0, 0.0, 0.0], [3.0, 0.0, 0.0]]
    y = [0, 2, 0]
    logits = torch.zeros(1, 5, 3, dtype=torch.float64)
    logits[0, 1:4] = torch.tensor(z, dtype=torch.float64)
    logits.requires_grad_(True)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 0, 2, 0]])
    loss = dft_loss(logits, labels)
    loss.backward()
    value, grads = _hand_dft(z, y)
    assert value == pytest.approx(0.2637, abs=1e-4)
    assert loss.item() == pytest.approx(value, rel=1e-6)
    assert logits.grad[0, 1:4].tolist() == [pytest.approx(g, rel=1e-6, abs=1e-12) for g in grads]
    assert logits.grad[0, [0, 4]].abs().sum() == 0  # positions with no target get nothing
    # Normalised like cross-entropy: by num_items_in_batch when given.
    assert dft_loss(logits, labels, num_items_in_batch=6).item() == pytest.approx(value / 2, rel=1e-6)


def test_dft_gradient_is_cross_entropys_scaled_by_the_target_probability() -> None:
    logits, labels = _random_batch(5)
    logits = logits.detach().double().requires_grad_(True)
    (g_dft,) = torch.autograd.grad(dft_loss(logits, labels), logits)
    (g_ce,) = torch.autograd.grad(cross_entropy(logits, labels), logits)
    shift_labels = labels[:, 1:]
    p_y = torch.softmax(logits[:, :-1].float(), -1).gather(-1, shift_labels.clamp(min=0).unsqueeze(-1))
    expected = g_ce.clone()
    expected[:, :-1] *= p_y.double() * (shift_labels != IGNORE_INDEX).unsqueeze(-1)
    torch.testing.assert_close(g_dft.float(), expected.float(), rtol=1e-5, atol=1e-7)


def test_dft_loss_and_gradient_equal_trls(tiny_model_dir, tiny_tokenizer, tmp_path) -> None:
    """On one batch, sftlab's DFT through its trainer's scored-positions path and TRL 1.16's SFTTrainer
    with ``loss_type="dft"`` (its fused LM head) give the same loss and the same gradient of every weight."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from sftlab.train.trainer import SFTLabTrainer, make_training_arguments

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, len(tiny_tokenizer), (3, 20), generator=g)
    labels = ids.clone()
    labels[0, :8] = IGNORE_INDEX  # a prompt
    labels[1, :3] = IGNORE_INDEX
    labels[2, 15:] = IGNORE_INDEX  # padding
    mask = torch.ones_like(ids)
    mask[2, 15:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ours_model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).train()
    ours = SFTLabTrainer(
        model=ours_model,
        args=make_training_arguments(output_dir=str(tmp_path / "ours")),
        processing_class=tiny_tokenizer,
        loss_fn=dft_loss,
    )
    ours_loss = ours.compute_loss(ours_model, dict(batch))
    ours_loss.backward()

    trl_model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).train()
    trl = SFTTrainer(
        model=trl_model,
        args=SFTConfig(output_dir=str(tmp_path / "trl"), loss_type="dft", report_to="none", use_cpu=True,
                       dataset_kwargs={"skip_prepare_dataset": True}),
        train_dataset=Dataset.from_dict({"input_ids": ids.tolist()}),
        processing_class=tiny_tokenizer,
    )
    trl_loss = trl.compute_loss(trl.model, dict(batch))
    trl_loss.backward()

    assert ours_loss.item() == pytest.approx(trl_loss.item(), abs=1e-6)
    ours_grads, trl_grads = grads(ours_model), grads(trl_model)
    assert ours_grads.keys() == trl_grads.keys() and ours_grads
    for name in ours_grads:
        torch.testing.assert_close(ours_grads[name], trl_grads[name], rtol=0, atol=1e-6, msg=name)
    # And DFT is not cross-entropy on this batch (the comparison above could not pass by accident).
    assert abs(cross_entropy(ours_model(input_ids=ids).logits, labels).item() - ours_loss.item()) > 0.1


def test_build_loss_picks_dft() -> None:
    cfg = TrainConfig(model_name_or_path="m", train_file="t.jsonl", loss="dft")
    logits, labels = _random_batch(6)
    assert build_loss(cfg)(logits, labels).item() == pytest.approx(dft_loss(logits, labels).item())


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sliced_cross_entropy_has_torchs_value_and_gradient(smoothing: float, dtype: torch.dtype, monkeypatch) -> None:
    from sftlab.models import tokens as token_constants

    generator = torch.Generator().manual_seed(0)
    # Over three slices of 64 rows, the last one short, with ignored targets in every slice.
    vocab = 301
    monkeypatch.setattr(token_constants, "SLICE_ELEMENTS", 64 * vocab)
    assert token_constants.rows_per_slice(vocab) == 64 and token_constants.rows_per_slice(49152) == 1
    rows = 2 * 64 + 17
    logits = (3 * torch.randn(1, rows + 1, vocab, generator=generator)).to(dtype).requires_grad_()
    labels = torch.randint(0, vocab, (1, rows + 1), generator=generator)
    labels[0, torch.randperm(rows + 1, generator=generator)[:40]] = IGNORE_INDEX
    reference = logits.detach().clone().requires_grad_()

    loss = cross_entropy(logits, labels, 50, label_smoothing=smoothing)
    expected = F.cross_entropy(reference[0, :-1].float(), labels[0, 1:], ignore_index=IGNORE_INDEX,
                               reduction="sum", label_smoothing=smoothing) / 50
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(logits, reference)  # the logits are left as they were (a regularizer may read them)
    (3 * loss).backward()  # an incoming gradient other than 1 scales the stored one
    (3 * expected).backward()
    assert logits.grad.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(logits.grad, reference.grad, rtol=1e-5, atol=1e-8)
    else:  # both round a float32 gradient to bf16: at most one bf16 step apart (the scaling rounds once more)
        torch.testing.assert_close(logits.grad.float(), reference.grad.float(), rtol=2 ** -7, atol=1e-6)
    assert torch.all(logits.grad[0, -1] == 0)  # the last position predicts nothing
    ignored = (labels[0, 1:] == IGNORE_INDEX).nonzero().squeeze(-1)
    assert torch.all(logits.grad[0, ignored] == 0)


def test_sliced_cross_entropy_without_gradient_and_with_the_batchs_own_count() -> None:
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, IGNORE_INDEX, 3], [IGNORE_INDEX, IGNORE_INDEX, 4, 5, 6]])
    with torch.no_grad():
        loss = cross_entropy(logits, labels)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_sliced_cross_entropy_reads_a_batch_of_rows_unshifted_with_slices_across_row_ends(monkeypatch) -> None:
    from sftlab.models import tokens as token_constants

    generator = torch.Generator().manual_seed(1)
    vocab = 301
    monkeypatch.setattr(token_constants, "SLICE_ELEMENTS", 64 * vocab)
    # 3 rows of 50 positions: the slices of 64 end inside rows, so each row's last position (which
    # predicts nothing) falls inside a slice.
    logits = (3 * torch.randn(3, 50, vocab, generator=generator)).requires_grad_()
    labels = torch.randint(0, vocab, (3, 50), generator=generator)
    labels[:, :7] = IGNORE_INDEX
    reference = logits.detach().clone().requires_grad_()

    loss = cross_entropy(logits, labels)
    expected = F.cross_entropy(reference[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1),
                               ignore_index=IGNORE_INDEX)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(logits.grad, reference.grad, rtol=1e-5, atol=1e-8)
    assert torch.all(logits.grad[:, -1] == 0) and torch.all(logits.grad[:, :6] == 0)
    assert torch.any(logits.grad[:, 6] != 0)  # position 6 predicts label 7, the first target
