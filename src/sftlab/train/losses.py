"""Token losses for causal-LM training: cross-entropy, label smoothing, GEM, DFT.

Every loss takes unshifted ``logits`` [B, T, V] and ``labels`` [B, T] (HF convention: position t
predicts label t+1; -100 is ignored) and returns the sum over target tokens divided by
``num_items_in_batch`` (the target-token count of the whole accumulated batch, which keeps gradient
accumulation exact) or, when that is None, by this batch's own target-token count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from sftlab.config import TrainConfig

IGNORE_INDEX = -100


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


def _normalise(total: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None) -> torch.Tensor:
    denom = num_items_in_batch if num_items_in_batch is not None else (labels != IGNORE_INDEX).sum().clamp(min=1)
    if isinstance(denom, torch.Tensor):
        denom = denom.to(total.device)
    return total / denom


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean next-token cross-entropy over target tokens, optionally label-smoothed.

    Label smoothing (Szegedy et al. 2016): the target distribution is (1-eps) * onehot + eps / V.
    """
    shift_logits, shift_labels = shift_for_next_token(logits, labels)
    total = F.cross_entropy(
        shift_logits.float(), shift_labels, ignore_index=IGNORE_INDEX, reduction="sum", label_smoothing=label_smoothing
    )
    return _normalise(total, shift_labels, num_items_in_batch)


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
