"""Token losses for causal-LM training: cross-entropy, label smoothing, GEM, DFT, EAFT, TOFU.

Every loss takes unshifted ``logits`` [B, T, V] and ``labels`` [B, T] (HF convention: position t
predicts label t+1; -100 is ignored) and returns the sum over target tokens divided by
``num_items_in_batch`` (the target-token count of the whole accumulated batch, which keeps gradient
accumulation exact) or, when that is None, by this batch's own target-token count.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from sftlab.models import tokens
from sftlab.models.tokens import IGNORE_INDEX, rows_per_slice


class LossFn(Protocol):
    """A token loss: (logits, labels, num_items_in_batch) -> scalar."""

    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None
    ) -> torch.Tensor: ...


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align position t's logits with token t+1, flattened to [N, V] and [N]."""
    shift_logits = logits[:, :-1, :].reshape(-1, logits.size(-1))
    shift_labels = labels[:, 1:].reshape(-1)
    return shift_logits, shift_labels


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """Per position t of [B, T] ``labels``, the token its logits predict (label t+1), flattened to [B * T];
    each row's last position predicts nothing (-100).

    The unshifted logits then pair with these row for row, so a loss can read them where they are:
    slicing off each row's last position (``logits[:, :-1]``) costs a copy of the logits for B > 1 and,
    in the backward, a zero-filled [B, T, V] gradient with the slice's copied in.
    """
    tail = labels.new_full((labels.size(0), 1), IGNORE_INDEX)
    return torch.cat([labels[:, 1:], tail], dim=1).reshape(-1)


def _denominator(labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None) -> int | torch.Tensor:
    """What a loss's sum is divided by: ``num_items_in_batch``, else this batch's target count."""
    denom = num_items_in_batch if num_items_in_batch is not None else (labels != IGNORE_INDEX).sum().clamp(min=1)
    return denom.to(labels.device) if isinstance(denom, torch.Tensor) else denom


def _normalise(total: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None) -> torch.Tensor:
    return total / _denominator(labels, num_items_in_batch)


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean next-token cross-entropy over target tokens, optionally label-smoothed.

    Label smoothing (Szegedy et al. 2016): the target distribution is (1-eps) * onehot + eps / V.
    Logits larger than one slice (:data:`~sftlab.models.tokens.SLICE_ELEMENTS`) go through
    :class:`SlicedCrossEntropy`, the same value and gradient a slice at a time; smaller ones (a tiny
    model's) through ``F.cross_entropy``, whose temporaries are then small and whose kernels are faster there
    (2.2x on 4,096 x 512 float32 logits; bench/cross_entropy.py). The sliced path reads the logits unshifted (:func:`next_token_targets`).
    """
    if logits.numel() > tokens.SLICE_ELEMENTS:
        targets = next_token_targets(labels)
        return SlicedCrossEntropy.apply(logits.reshape(-1, logits.size(-1)), targets,
                                        _denominator(targets, num_items_in_batch), label_smoothing)
    shift_logits, shift_labels = shift_for_next_token(logits, labels)
    denom = _denominator(shift_labels, num_items_in_batch)
    total = F.cross_entropy(shift_logits.float(), shift_labels, ignore_index=IGNORE_INDEX, reduction="sum",
                            label_smoothing=label_smoothing)
    return total / denom


class SlicedCrossEntropy(torch.autograd.Function):
    """Next-token cross-entropy summed over targets and divided by ``denom``, with its gradient computed in
    the forward, a slice of :data:`~sftlab.models.tokens.SLICE_ELEMENTS` logits
    (:func:`~sftlab.models.tokens.rows_per_slice` rows) at a time.

    Per row with logits z (in float32), target y and p = softmax(z): loss = logsumexp(z) - z_y, gradient
    p - onehot(y); with label smoothing eps, loss = (1-eps) (lse - z_y) + eps (lse - mean(z)) and gradient
    p - (1-eps) onehot(y) - eps / V. Rows whose target is -100 add 0 and get a zero gradient. These are
    ``F.cross_entropy``'s value and gradient (tests/test_losses.py checks both against it).

    ``F.cross_entropy`` on [N, V] bf16 logits makes five [N, V] tensors in a step: the float32 copy, the
    log-softmax, the one-hot gradient of the NLL, the log-softmax gradient and its bf16 cast. On SmolLM2
    (49,152 tokens) they are 29-58 MB each at 8 x 96 tokens, each one mapped fresh by malloc and faulted in
    by the kernel. Here the float32 work stays in slices, and the one [N, V] tensor
    made is the gradient itself, in the logits' dtype, rounded once from float32 as autograd's cast would.
    Since the loss is a scalar, the gradient is known in the forward; the backward only scales it by the
    incoming gradient (1 in a plain step, so the common case is free). 2.1x faster than ``F.cross_entropy``
    at 297 scored rows and 4.0x at 8,192, with 4.6 GB less peak memory there (bench/cross_entropy.py).
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor, denom: int | torch.Tensor,
                label_smoothing: float = 0.0) -> torch.Tensor:
        eps, vocab = label_smoothing, logits.size(-1)
        grad = torch.empty_like(logits) if ctx.needs_input_grad[0] else None
        scale = 1.0 / denom  # the reduction's divisor, folded into the gradient before its rounding
        total = logits.new_zeros((), dtype=torch.float32)
        rows = rows_per_slice(vocab)
        for start in range(0, logits.size(0), rows):
            z = logits[start : start + rows].to(torch.float32, copy=True)  # a copy even of float32 logits:
            # the softmax below is computed in it, and the logits are the caller's (a regularizer reads them)
            y = targets[start : start + rows]
            valid = (y != IGNORE_INDEX).unsqueeze(-1)
            y = y.clamp(min=0).unsqueeze(-1)  # any index where ignored: its row is masked out
            lse = torch.logsumexp(z, dim=-1, keepdim=True)
            row_loss = lse - z.gather(-1, y)
            if eps:
                row_loss = (1 - eps) * row_loss + eps * (lse - z.mean(-1, keepdim=True))
            total = total + row_loss.masked_fill(~valid, 0).sum()
            if grad is not None:
                probs = z.sub_(lse).exp_()  # softmax, in the float32 copy's memory
                probs.scatter_add_(-1, y, probs.new_full(y.shape, -(1 - eps)))
                if eps:
                    probs.sub_(eps / vocab)
                probs.mul_(valid * scale)
                grad[start : start + rows].copy_(probs)
        ctx.save_for_backward(grad)
        return total * scale

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (grad,) = ctx.saved_tensors
        if grad is not None and grad_output.item() != 1.0:
            grad = grad * grad_output  # a 0-dim float32 factor: one rounding to the gradient's dtype
        return grad, None, None, None


def gem_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    beta: float = 0.7,
    h: Literal["linear", "logsigmoid"] = "linear",
) -> torch.Tensor:
    """GEM, entropic distribution matching (Li et al. 2024, "Preserving Diversity in Supervised
    Fine-tuning of Large Language Models", ICLR 2025; arXiv:2408.16673).

    Per target token, with logits z, target y and p = softmax(z):

        L = -sum_v q_v * w_v * (log p_y - log p_v),   q = stopgrad(softmax(z / beta))

    ``h`` sets the weights w (stop-gradient), as in the reference code (github.com/liziniu/GEM,
    ``sft_trainer.py``, ``gem_loss``):

    - ``linear``: w_v = 1.
    - ``logsigmoid``: w_v = sigmoid(0.01 * (z_v - z_y)), the derivative h'(z_y - z_v) of
      h(x) = 100 * logsigmoid(x / 100); the reference code uses this 0.01 scale.

    Since log p_y - log p_v = z_y - z_v (the normaliser cancels), it is computed from the logits
    directly, which skips a log-softmax over the vocabulary. The gradient is dL/dz_v = q_v w_v for
    v != y and dL/dz_y = -sum_{v != y} q_v w_v. With ``h="linear"`` and ``beta=1`` that is
    softmax(z) - onehot(y), exactly cross-entropy's gradient; the value there is -log p_y - H(p), with
    the entropy H(p) held constant by the stop-gradient. Lower beta sharpens q: gradient mass goes to the tokens the model already
    favours instead of spreading over the whole vocabulary, which keeps the output entropy up.
    Reduction as every loss here: the sum over target tokens / ``num_items_in_batch``.
    """
    shift_logits, shift_labels = shift_for_next_token(logits, labels)
    target = shift_labels != IGNORE_INDEX
    # Only target positions matter: selecting them first keeps the [N, V] float32 work small.
    z = shift_logits[target].float()
    y = shift_labels[target]
    z_y = z.gather(-1, y.unsqueeze(-1))
    with torch.no_grad():
        weights = torch.softmax(z / beta, dim=-1)
        if h == "logsigmoid":
            weights.mul_(torch.sigmoid(0.01 * (z - z_y)))
        elif h != "linear":
            raise ValueError(f"unknown GEM h {h!r}; choose linear or logsigmoid")
    # -sum_v qw_v (z_y - z_v) = sum_v qw_v z_v - z_y * sum_v qw_v
    per_token = (weights * z).sum(-1) - z_y.squeeze(-1) * weights.sum(-1)
    return _normalise(per_token.sum(), shift_labels, num_items_in_batch)


def dft_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """DFT, dynamic fine-tuning (Wu et al. 2025, "On the Generalization of SFT: A Reinforcement Learning
    Perspective with Reward Rectification", arXiv:2508.05629; TRL's ``SFTConfig(loss_type="dft")``).

    Per target token y_t with model probability p(y_t) = softmax(z_t)[y_t]:

        L_t = -stopgrad(p(y_t)) * log p(y_t)

    The paper reads the SFT gradient as a policy gradient whose implicit reward is 1 / p(y_t), which
    blows up on tokens the model finds unlikely; multiplying each token's cross-entropy by its own
    (detached) probability cancels that weight. The gradient is therefore p(y_t) times cross-entropy's,
    dL_t/dz_t = p(y_t) * (softmax(z_t) - onehot(y_t)): confident tokens train as under cross-entropy and
    improbable ones barely move the model. Reduction as every loss here: the sum over target tokens /
    ``num_items_in_batch`` (TRL divides by the same count).
    """
    shift_logits, shift_labels = shift_for_next_token(logits, labels)
    # nll_t = -log p(y_t), and 0 (with no gradient) at ignored positions, so p * nll needs no masking:
    # the cost is cross-entropy's plus two elementwise ops over the tokens.
    nll = F.cross_entropy(shift_logits.float(), shift_labels, ignore_index=IGNORE_INDEX, reduction="none")
    per_token = torch.exp(-nll.detach()) * nll
    return _normalise(per_token.sum(), shift_labels, num_items_in_batch)


def eaft_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    alpha: float = 1.0,
    k: int = 20,
    entropy_norm: float | None = 3.0,
) -> torch.Tensor:
    """EAFT, entropy-adaptive fine-tuning (Diao et al. 2026, "Entropy-Adaptive Fine-Tuning: Resolving Confident
    Conflicts to Mitigate Forgetting", arXiv:2601.02151; official code PRIS-CV/EAFT, its LLaMA-Factory fork's
    ``_eaft_cross_entropy``).

    Per target token y_t with logits z_t, over the k largest logits (k capped at the vocabulary):

        q = softmax(topk(z_t, k)),   H_t = -sum_i q_i log q_i,   w_t = stopgrad((H_t / c) ^ alpha)
        L_t = -w_t * log softmax(z_t)[y_t]

    c is ``entropy_norm``: 3.0 in the official code (k = 20, and ln 20 = 2.996), or ln k when None, the
    paper's H / ln K. The weight is computed under ``no_grad`` as in the official code, so the gradient is
    w_t times cross-entropy's. Tokens where the model is confident (low entropy) get little gradient
    whatever their probability: the "confident conflicts" the paper blames for forgetting.
    Reduction as every loss here: the sum over target tokens / ``num_items_in_batch``.

    Where the ports differ: LLaMA-Factory's ``use_eaft_loss`` / ``eaft_alpha`` is the official code (k = 20 fixed,
    divided by 3.0). Axolotl's ``use_eaft`` / ``eaft_alpha`` / ``eaft_k`` first used the unnormalised top-k
    entropy (weights up to ln k), and later divides by ln k (the paper's form, ``entropy_norm: null`` here) with
    k capped at 32; it also adds 1e-10 inside the log, which the official code does not.
    """
    shift_logits, shift_labels = shift_for_next_token(logits, labels)
    target = shift_labels != IGNORE_INDEX
    # Only target positions matter: selecting them first keeps the [N, V] float32 work small.
    z = shift_logits[target].float()
    nll = F.cross_entropy(z, shift_labels[target], reduction="none")
    with torch.no_grad():
        top = z.topk(min(k, z.size(-1)), dim=-1).values
        log_q = torch.log_softmax(top, dim=-1)
        entropy = -(log_q.exp() * log_q).sum(-1)
        norm = math.log(top.size(-1)) if entropy_norm is None else entropy_norm
        weight = (entropy / norm).pow(alpha)
    return _normalise((weight * nll).sum(), shift_labels, num_items_in_batch)


def tofu_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    gamma: float = 3.0,
    beta: float = 0.8,
) -> torch.Tensor:
    """TOFU, tempered focal loss (Klypa & Cherednichenko 2026, "Diversity in Large Language Models under
    Supervised Fine-Tuning", arXiv:2605.00195; official code github.com/rsklypa/TOFU, ``train/tofu_loss.py``).

    Per target token y_t with logits z_t, p = softmax(z_t)[y_t] and the tempered log-probability
    log p^beta = log softmax(z_t / beta)[y_t]:

        g(p, gamma) = (1 - p)^gamma - gamma * p * (1 - p)^(gamma - 1) * log p      (detached)
        L_t = -stopgrad(g(p, gamma)) * beta * log softmax(z_t / beta)[y_t]

    g is the derivative of the focal loss -(1 - p)^gamma log p with respect to log p: it is near 1 on tokens
    the model finds unlikely and falls to 0 as p -> 1, so confident tokens stop pulling (the paper's neglect of
    low-frequency patterns). The temperature beta < 1 sharpens the distribution the gradient is taken
    through, and the factor beta keeps the gradient's scale: dL_t/dz_t = g * (softmax(z_t / beta) - onehot).
    The official defaults are gamma 3 and beta 0.8. Reduction as every loss here: the sum over target tokens
    / ``num_items_in_batch`` (the official code divides by the same count).
    """
    shift_logits, shift_labels = shift_for_next_token(logits, labels)
    target = shift_labels != IGNORE_INDEX
    # Only target positions matter: selecting them first keeps the [N, V] float32 work small.
    z = shift_logits[target].float()
    y = shift_labels[target].unsqueeze(-1)
    log_p_tempered = torch.log_softmax(z / beta, dim=-1).gather(-1, y).squeeze(-1)
    with torch.no_grad():
        log_p = torch.log_softmax(z, dim=-1).gather(-1, y).squeeze(-1)
        p = log_p.exp()
        focal = (1 - p).pow(gamma) - gamma * p * (1 - p).pow(gamma - 1) * log_p
    return _normalise(-(focal * beta * log_p_tempered).sum(), shift_labels, num_items_in_batch)
