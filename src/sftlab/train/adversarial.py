"""Adversarial training on the input embeddings: FreeLB (Zhu et al. 2020, ICLR, arXiv:1909.11764) and
SMART's smoothness-inducing term (Jiang et al. 2020, ACL, arXiv:1911.03437).

Notation. e is the input-embedding output [B, T, d]; delta a perturbation of it, zero on padding; a
document D is a sequence or, under packing, one packed document (found as NEFTune finds them:
``sftlab.train.neftune.ForwardInputs``, ``document_ids``), with L real tokens. Norms are per document:
||x||_D is the Frobenius norm over D's tokens (``l2``) or the largest |x| in D (``linf``).

One projected gradient ascent step on a loss R, g = dR/d(delta):

    l2:    delta <- P(delta + eta * g / ||g||_D),   P rescales each document with ||delta||_D > eps to eps
    linf:  delta <- clip(delta + eta * sign(g), -eps, eps)        (the l-inf steepest ascent, Madry et al. 2018)

The start is delta_0 = 0, or with ``init`` a > 0 a random one, projected: l2, a / sqrt(L d) * U(-1, 1)
elementwise (FreeLB's code; NEFTune's noise with alpha = a); linf, U(-a, a).

**FreeLB** (``method: freelb``). K = ``steps`` ascent steps on the training loss itself, and the
parameter gradient is the mean over the K + 1 perturbations visited:

    grad_theta = 1/(K+1) * sum_{t=0..K} d/d(theta) loss(e + delta_t),   delta_{t+1} = step(delta_t, d loss/d delta_t)

Every visit is one forward and one backward, which yields the parameter and the perturbation
gradients together (the "free" in FreeLB): each ascent step costs about one more plain step. The
paper's K counts visits (K + 1 here). The loss is the whole training loss, regularizer penalties
included, and the logged loss is its mean over the visits. With ``steps: 0`` and no random start the
one visit is plain training, bit for bit.

**SMART** (``method: smart``). The task loss stays clean and a smoothness penalty joins it:

    lambda_s * mean over scored positions of  l_s(p(. | e + delta*), p(. | e)),   l_s(P, Q) = KL(P || Q) + KL(Q || P)

with p the next-token distribution at each position whose target is trained (the responses), and
delta* from K ascent steps on that same term (with the clean distribution held fixed), from a random
start: at delta = 0 the term is at its minimum and its gradient is 0. The gradient then flows through
both distributions, as the paper's formula has it (MT-DNN's code stops the gradient of each KL's
target side). Each ascent step costs a forward and a backward, and the penalty one more forward.

Both act on real tokens only, in training mode only; the hook sits on the base model's input
embedding (under PEFT too), so they compose with every method and the other remedies (NEFTune's noise
is drawn afresh in every forward, perturbed ones included). FreeLB runs each micro-batch several times
inside one ``Trainer.training_step``, which DeepSpeed cannot do (its engine steps on every backward).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from sftlab.models.tokens import IGNORE_INDEX
from sftlab.train.neftune import ForwardInputs, base_model, document_ids, neftune_noise, per_document_sum
from sftlab.train.regularizers import NOT_MODEL_INPUTS, SCORED_POSITIONS_KEY

if TYPE_CHECKING:
    from sftlab.train.remedies.adversarial import AdversarialSettings

Norm = Literal["l2", "linf"]


def document_norms(x: torch.Tensor, doc_id: torch.Tensor, norm: Norm) -> torch.Tensor:
    """[B, T]: for every position, ||x||_D of its document, x [B, T, d] (Frobenius, or max |x|)."""
    if norm == "l2":
        return per_document_sum(x.float().pow(2).sum(-1), doc_id).sqrt()
    peaks = torch.zeros(doc_id.numel(), device=x.device, dtype=torch.float32)
    peaks.scatter_reduce_(0, doc_id.flatten(), x.float().abs().amax(-1).flatten(), reduce="amax")
    return peaks[doc_id.flatten()].view_as(doc_id)


def project(delta: torch.Tensor, doc_id: torch.Tensor, epsilon: float, norm: Norm) -> torch.Tensor:
    """P: the nearest point of the per-document ball of radius ``epsilon`` (l2 rescale, or linf clip)."""
    if norm == "linf":
        return delta.clamp(-epsilon, epsilon)
    norms = document_norms(delta, doc_id, "l2")
    factor = torch.where(norms > epsilon, epsilon / norms.clamp(min=1e-12), torch.ones_like(norms))
    return delta * factor.unsqueeze(-1)


def ascent_step(
    delta: torch.Tensor,
    grad: torch.Tensor,
    real: torch.Tensor,
    doc_id: torch.Tensor,
    step_size: float,
    epsilon: float,
    norm: Norm,
) -> torch.Tensor:
    """One projected gradient ascent step: P(delta + eta * g / ||g||_D) (l2) or
    clip(delta + eta * sign(g), -eps, eps) (linf), zero where ``real`` [B, T] is 0."""
    grad = grad.float() * real.unsqueeze(-1)
    if norm == "l2":
        direction = grad / document_norms(grad, doc_id, "l2").clamp(min=1e-12).unsqueeze(-1)
    else:
        direction = grad.sign()
    return project(delta + step_size * direction, doc_id, epsilon, norm) * real.unsqueeze(-1)


class EmbeddingPerturbation:
    """Adds a perturbation delta to the input-embedding output of real tokens, while active and in
    training mode. delta is made at the first forward of an episode (zero, or the random start), from
    that forward's real-token mask and documents; :meth:`ascend` moves it one step.
    """

    def __init__(
        self, model: torch.nn.Module, settings: AdversarialSettings, pad_token_id: int | None = None
    ) -> None:
        self.settings = settings
        self.inputs = ForwardInputs(model, pad_token_id)
        self.embedding = base_model(model).get_input_embeddings()
        self._handle = self.embedding.register_forward_hook(self._perturb)
        self.active = False
        self.delta: torch.Tensor | None = None
        self.real: torch.Tensor | None = None
        self.doc_id: torch.Tensor | None = None
        self.visited: list[torch.Tensor] = []  # the perturbations this episode used, detached
        self._grad_on = False
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # the last episode's final delta, doc ids

    def begin(self) -> None:
        """Start an episode (one micro-batch): the next forward makes a fresh delta."""
        self.active, self.delta, self.visited = True, None, []

    def end(self) -> None:
        """End the episode: forwards are clean again."""
        if self.visited and self.doc_id is not None:
            self._last = (self.visited[-1], self.doc_id)
        self.active, self.delta, self.real, self.doc_id = False, None, None, None

    def track_gradient(self, on: bool) -> None:
        """Whether the next forward's delta collects a gradient (in ``delta.grad`` after a backward)."""
        if self.delta is not None:
            self.delta = self.delta.detach().requires_grad_(on)
        self._grad_on = on

    def ascend(self, grad: torch.Tensor | None = None) -> None:
        """Move delta one ascent step along ``grad`` (default ``delta.grad``, left by a backward)."""
        if self.delta is None or self.real is None or self.doc_id is None:
            raise RuntimeError("adversarial: no perturbed forward ran (is the model in training mode?)")
        grad = self.delta.grad if grad is None else grad
        if grad is None:
            raise RuntimeError("adversarial: the perturbation got no gradient (did the loss reach it?)")
        s = self.settings
        with torch.no_grad():
            self.delta = ascent_step(self.delta, grad, self.real, self.doc_id, s.step_size, s.epsilon, s.norm)
        self.track_gradient(self._grad_on)

    def remove(self) -> None:
        """Detach the hooks; the model is as it was."""
        self._handle.remove()
        self.inputs.remove()
        self.end()

    def mean_norm(self) -> float:
        """Mean per-document norm of the last perturbation of the last episode (0 before any)."""
        if self._last is None:
            return 0.0
        delta, doc_id = self._last
        # Padding positions (a packed row's tail) count as a document of norm 0: average real ones only.
        norms = document_norms(delta, doc_id, self.settings.norm)
        real = delta.abs().amax(-1) > 0
        return norms[real].mean().item() if real.any() else 0.0

    def _start(self, embeds: torch.Tensor) -> torch.Tensor:
        batch, length, _ = embeds.shape
        self.real = self.inputs.real_mask(batch, length, embeds.device)
        positions = self.inputs.positions(length)
        self.doc_id = document_ids(self.real, positions)
        s = self.settings
        zeros = torch.zeros_like(embeds, dtype=torch.float32)
        if s.init == 0:
            return zeros
        if s.norm == "l2":
            start = neftune_noise(zeros, self.real, s.init, "uniform", positions)
        else:
            start = torch.rand_like(zeros).mul_(2 * s.init).sub_(s.init) * self.real.unsqueeze(-1)
        return project(start, self.doc_id, s.epsilon, s.norm)

    def _perturb(self, module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        if not self.active or not module.training or output.dim() != 3:
            return output
        if self.delta is None:
            self.delta = self._start(output).requires_grad_(self._grad_on)
        if self.delta.shape != output.shape:
            raise RuntimeError(f"adversarial: perturbation {tuple(self.delta.shape)} vs embeddings {tuple(output.shape)}")
        self.visited.append(self.delta.detach())
        return output + self.delta.to(output.dtype)


class FreeLB:
    """FreeLB for one trainer: :meth:`training_step` runs a micro-batch's forward and backward once per
    perturbation, K = ``steps`` ascent steps apart. The trainer divides each visit's loss by
    :attr:`passes` (``SFTLabTrainer.compute_loss``), so the parameter gradient is their mean."""

    def __init__(self, model: torch.nn.Module, settings: AdversarialSettings, pad_token_id: int | None = None) -> None:
        if settings.method != "freelb":
            raise ValueError(f"FreeLB got adversarial method {settings.method!r}")
        self.settings = settings
        self.perturbation = EmbeddingPerturbation(model, settings, pad_token_id)

    @property
    def passes(self) -> int:
        """Forward-backward visits per micro-batch: steps + 1."""
        return self.settings.steps + 1

    def training_step(self, step: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run ``step`` (one forward and backward of the micro-batch, returning its detached loss)
        :attr:`passes` times, an ascent step on the perturbation after each but the last; returns the
        sum of the returned losses (each already divided by ``passes``: their mean)."""
        pert = self.perturbation
        pert.begin()
        total: torch.Tensor | None = None
        try:
            for visit in range(self.passes):
                last = visit == self.settings.steps
                pert.track_gradient(not last)  # the last visit's delta is never moved: no gradient needed
                loss = step()
                total = loss if total is None else total + loss
                if not last:
                    pert.ascend()
        finally:
            pert.end()
        assert total is not None
        return total

    def log_values(self) -> dict[str, float]:
        """What to log: the mean per-document norm of the last perturbation trained on."""
        return {"adversarial/delta_norm": self.perturbation.mean_norm()}

    def remove(self) -> None:
        """Detach the hooks."""
        self.perturbation.remove()


def symmetric_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Mean over rows of l_s(P, Q) = KL(P || Q) + KL(Q || P), P = softmax(logits_p), Q = softmax(logits_q),
    for [N, V] logits (0 when N = 0): sum_v (p_v - q_v) (log p_v - log q_v)."""
    log_p = F.log_softmax(logits_p.float(), dim=-1)
    log_q = F.log_softmax(logits_q.float(), dim=-1)
    total = ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum()
    return total / max(logits_p.size(0), 1)


class SmartSmoothness:
    """SMART's smoothness term as a regularizer (the trainer adds ``penalty`` to the loss and logs it
    as ``loss/smart``): lambda_s * l_s between the perturbed and the clean next-token distributions at
    the scored positions, delta* from K ascent steps on that term (see the module docstring).

    It reads the clean logits at scored positions only (``scored_logits_suffice``), and runs its own
    perturbed forwards through ``model`` as it was when built (the module the trainer calls, before any
    distributed wrapper, whose reducers expect one forward per backward).
    """

    name = "smart"
    scored_logits_suffice = True

    def __init__(self, model: torch.nn.Module, settings: AdversarialSettings, pad_token_id: int | None = None) -> None:
        if settings.method != "smart":
            raise ValueError(f"SmartSmoothness got adversarial method {settings.method!r}")
        self.model = model
        self.settings = settings
        self.perturbation = EmbeddingPerturbation(model, settings, pad_token_id)

    def _perturbed_logits(self, model_inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """The perturbed forward's logits at the scored positions, [N, V] in row-major order."""
        from sftlab.train.trainer import scored_positions_only

        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        if head is None:
            logits = self.model(**model_inputs).logits
            return logits[:, logits.size(1) - labels.size(1) :][:, :-1][labels[:, 1:] != IGNORE_INDEX]
        with scored_positions_only(head, labels):
            return self.model(**model_inputs).logits[0, :-1]

    def penalty(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        """lambda_s * mean l_s(p(. | e + delta*), p(. | e)) over the scored positions."""
        labels = inputs["labels"]
        if SCORED_POSITIONS_KEY in inputs:
            clean = outputs.logits[0, :-1]  # gathered: the scored positions, then one unscored row
        else:
            logits = outputs.logits[:, outputs.logits.size(1) - labels.size(1) :]
            clean = logits[:, :-1][labels[:, 1:] != IGNORE_INDEX]
        model_inputs = {k: v for k, v in inputs.items() if k not in NOT_MODEL_INPUTS}
        pert = self.perturbation
        pert.begin()
        try:
            pert.track_gradient(True)
            for _ in range(self.settings.steps):
                term = symmetric_kl(self._perturbed_logits(model_inputs, labels), clean.detach())
                (grad,) = torch.autograd.grad(term, pert.delta)
                pert.ascend(grad)
            pert.track_gradient(False)
            term = symmetric_kl(self._perturbed_logits(model_inputs, labels), clean)
        finally:
            pert.end()
        return self.settings.smoothness_weight * term

    def log_values(self) -> dict[str, float]:
        """What to log: the mean per-document norm of the last delta*."""
        return {"adversarial/delta_norm": self.perturbation.mean_norm()}

    def remove(self) -> None:
        """Detach the hooks."""
        self.perturbation.remove()


def attach_adversarial(
    model: torch.nn.Module, settings: AdversarialSettings, pad_token_id: int | None = None
) -> FreeLB | SmartSmoothness:
    """The adversary ``settings`` ask for, hooked on ``model`` (the module the trainer calls): a
    :class:`FreeLB` for ``SFTLabTrainer.adversary``, or a :class:`SmartSmoothness` regularizer."""
    if settings.method == "freelb":
        return FreeLB(model, settings, pad_token_id)
    return SmartSmoothness(model, settings, pad_token_id)
