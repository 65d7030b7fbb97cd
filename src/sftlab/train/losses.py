"""Token losses for causal-LM training: cross-entropy, label smoothing, GEM, DFT.

Every loss takes unshifted ``logits`` [B, T, V] and ``labels`` [B, T] (HF convention: position t
predicts label t+1; -100 is ignored) and returns the sum over target tokens divided by
``num_items_in_batch`` (the target-token count of the whole accumulated batch, which keeps gradient
accumulation exact) or, when that is None, by this batch's own target-token count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from sftlab.models import tokens
from sftlab.models.tokens import IGNORE_INDEX, rows_per_slice

if TYPE_CHECKING:
    from sftlab.config import TrainConfig

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


def build_loss(cfg: "TrainConfig") -> LossFn:
    """The token loss a train config asks for (``loss`` and its settings)."""
    if cfg.loss == "label_smoothing":
        eps = cfg.label_smoothing_factor
        return lambda logits, labels, n=None: cross_entropy(logits, labels, n, label_smoothing=eps)
    if cfg.loss == "gem":
        beta, h = cfg.gem.beta, cfg.gem.h
        return lambda logits, labels, n=None: gem_loss(logits, labels, n, beta=beta, h=h)
    if cfg.loss == "dft":
        return dft_loss
    return cross_entropy
