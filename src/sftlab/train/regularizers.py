"""Penalties added to the task loss to keep the tuned model near its base: L2-SP, EWC, KL-to-base.

A regularizer is any object with a ``name`` and a ``penalty(model, inputs, outputs)`` that returns a
scalar tensor; the trainer adds every penalty to the task loss and logs each one by name. Two optional
attributes tell the trainer which logits a regularizer reads, so that it can run the output head on the
scored positions only (see ``sftlab.train.trainer.scored_positions_only``): ``uses_logits = False``
(a pure weight penalty: none) and ``scored_logits_suffice = True`` (only logits at scored positions).

Weight-space penalties (L2-SP, EWC) count only trainable parameters and anchor them at their values
when the regularizer is built, which must be the start of training (before a checkpoint is loaded on
resume). For full fine-tuning that is the base weights; for PEFT it is the adapter's initialisation
(LoRA's B = 0, so the merged model equals the base there). They are computed with ``torch._foreach_*``
ops over the whole parameter list: a few fused kernels per step instead of several per tensor.

Sharded training (FSDP2). The state is captured from the full model before the Trainer wraps it, and
must then follow the model onto its shards: ``bind(model, accelerator)``, which the trainer calls
once the model is wrapped (its first training step), keeps of each anchor and Fisher tensor only the
slice this rank's parameter shard holds, and shards a frozen KL base as the model was sharded. A
weight penalty is then each rank's sum over its own shards, summed over the ranks for its value
(see ``sftlab.train.distributed.sum_over_shards``), so its per-rank memory falls with the number of
ranks. ``state_tensors()`` lists what a regularizer keeps per parameter, for measuring that.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
import torch.nn.functional as F
from rich.progress import Progress
from safetensors.torch import load_file, save_file

from sftlab.errors import UserError
from sftlab.models.tokens import IGNORE_INDEX
from sftlab.train.distributed import (
    count_over_ranks,
    is_fsdp2,
    local,
    reshard,
    shard_like,
    shard_module_like,
    sum_over_shards,
)
from sftlab.train.losses import cross_entropy
from sftlab.train.neftune import packed_padding

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

    from sftlab.train.weight_rounding import DitheredBf16

log = logging.getLogger(__name__)

# Batch key the data pipeline sets on replay tokens: a [B, T] (per token, needed under packing) or
# [B] (per row) 0/1 tensor. The trainer must drop it before calling the model.
REPLAY_MASK_KEY = "replay_mask"
# Batch key the trainer sets for the regularizers when the output head ran on scored positions only: a
# [B, T] bool mask, True at each position t whose logits were computed (labels[t+1] != -100). The logits
# are then ``[1, N+1, V]``: the N scored positions in row-major order, then one row no label scores.
SCORED_POSITIONS_KEY = "scored_positions"
# Batch keys that are not model inputs.
NOT_MODEL_INPUTS = ("labels", REPLAY_MASK_KEY, SCORED_POSITIONS_KEY)
FISHER_FILE = "ewc_fisher.safetensors"
_FISHER_FORMAT = "sftlab-ewc-diagonal-fisher-v1"


class Regularizer(Protocol):
    """One additive penalty term.

    A regularizer may also set ``uses_logits = False`` (it never reads ``outputs.logits``) or
    ``scored_logits_suffice = True`` (it reads them at scored positions only and understands the
    gathered layout flagged by ``inputs[SCORED_POSITIONS_KEY]``); without either, it gets full logits.
    One that keeps state per parameter also has ``bind(model, accelerator)``, called once the
    Trainer has wrapped the model (see the module docstring), and ``state_tensors()``.
    """

    name: str

    def penalty(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        """The penalty for this step; ``outputs`` is the model's forward output on ``inputs``."""
        ...


# --------------------------------------------------------------------------------------------------
# Weight-space anchors


class Anchor:
    """The trainable parameters of a model and a frozen copy of their starting values.

    Shared by L2-SP and EWC, so using both keeps one copy of the starting point in memory. Built on
    the model before it is wrapped; :meth:`bind` moves it onto the wrapped model's parameters.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise UserError("the model has no trainable parameters: a weight-space penalty has nothing to act on")
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.start = [p.detach().clone() for p in self.params]
        self.bound = False
        # Set by the trainer in a dithered bf16 run (sftlab.train.weight_rounding): during a step the
        # parameters hold rounded values, and deltas() measures from the masters instead.
        self.rounding: DitheredBf16 | None = None

    def bind(self, model: torch.nn.Module) -> None:
        """Point at ``model``'s parameters (the wrapped model: FSDP2 replaces every parameter with a
        DTensor) and keep of each starting value only the slice this rank's shard holds. Idempotent."""
        if self.bound:
            return
        named = dict(model.named_parameters())
        missing = [n for n in self.names if n not in named]
        if missing:
            raise ValueError(f"the wrapped model has no parameter {missing[0]} ({len(missing)} missing)")
        self.params = [named[n] for n in self.names]
        self.start = [shard_like(start, p) for start, p in zip(self.start, self.params)]
        self.bound = True

    @property
    def local_params(self) -> list[torch.Tensor]:
        """This rank's shard of each parameter (the parameter itself when unsharded), differentiable."""
        return [local(p) for p in self.params]

    def deltas(self) -> list[torch.Tensor]:
        """theta - theta_0 per parameter (this rank's shards), differentiable in theta; theta is the master
        weight even while a dithered step has the parameter rounded (the anchor is shifted by the
        rounding error, a constant, so the gradient is unchanged)."""
        start = self.start
        if self.rounding is not None and self.rounding.active:
            errors = [self.rounding.rounding_error(p) for p in self.params]
            start = [s if e is None else s - e for s, e in zip(self.start, errors)]
        return torch._foreach_sub(self.local_params, start)


def _sum_of_squares(tensors: list[torch.Tensor]) -> torch.Tensor:
    """sum_i ||t_i||^2 over a list, as one foreach norm (its backward is 0-safe at t = 0)."""
    norms = torch._foreach_norm(tensors)
    return torch.stack([n.float() for n in norms]).pow(2).sum()


class L2SP:
    """L2-SP (Li, Grandvalet and Davoine 2018, "Explicit inductive bias for transfer learning with
    convolutional networks"): (lambda / 2) * ||theta - theta_0||^2 over the trainable parameters.

    Gradient: lambda * (theta - theta_0).
    """

    name = "l2sp"
    uses_logits = False  # a weight penalty: the trainer may skip unscored positions' logits

    def __init__(self, anchor: Anchor, lam: float) -> None:
        self.anchor = anchor
        self.lam = lam

    def bind(self, model: torch.nn.Module, accelerator: "Accelerator | None" = None) -> None:
        """Anchor on the wrapped model's (possibly sharded) parameters."""
        self.anchor.bind(model)

    def state_tensors(self) -> list[torch.Tensor]:
        """theta_0, as this rank holds it."""
        return list(self.anchor.start)

    def penalty(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        """(lambda / 2) * sum_i (theta_i - theta_0,i)^2, over all ranks' shards."""
        return sum_over_shards(0.5 * self.lam * _sum_of_squares(self.anchor.deltas()), self.anchor.params)


class EWC:
    """Elastic weight consolidation (Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in
    neural networks", PNAS): (lambda / 2) * sum_i F_i (theta_i - theta*_i)^2, with F the diagonal
    Fisher from :func:`diagonal_fisher` and theta* the starting weights.

    Computed as (lambda / 2) * sum ||sqrt(F) * (theta - theta*)||^2, so each step is three foreach
    kernels. Gradient: lambda * F * (theta - theta*).
    """

    name = "ewc"
    uses_logits = False  # a weight penalty: the trainer may skip unscored positions' logits

    def __init__(self, anchor: Anchor, fisher: dict[str, torch.Tensor], lam: float) -> None:
        missing = [n for n in anchor.names if n not in fisher]
        if missing:
            raise ValueError(f"Fisher has no entry for {len(missing)} trainable parameters, e.g. {missing[0]}")
        self.anchor = anchor
        self.lam = lam
        self.sqrt_fisher = [
            fisher[n].to(device=local(p).device, dtype=p.dtype).sqrt() for n, p in zip(anchor.names, anchor.params)
        ]
        self.bound = False

    def bind(self, model: torch.nn.Module, accelerator: "Accelerator | None" = None) -> None:
        """Anchor on the wrapped model's parameters; keep this rank's slice of sqrt(F). Idempotent."""
        self.anchor.bind(model)
        if not self.bound:
            self.sqrt_fisher = [shard_like(f, p) for f, p in zip(self.sqrt_fisher, self.anchor.params)]
            self.bound = True

    def state_tensors(self) -> list[torch.Tensor]:
        """theta* and sqrt(F), as this rank holds them."""
        return [*self.anchor.start, *self.sqrt_fisher]

    def penalty(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        """(lambda / 2) * sum_i F_i (theta_i - theta*_i)^2, over all ranks' shards."""
        weighted = torch._foreach_mul(self.anchor.deltas(), self.sqrt_fisher)
        return sum_over_shards(0.5 * self.lam * _sum_of_squares(weighted), self.anchor.params)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout, no NEFTune noise) inside; each module's own mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def diagonal_fisher(
    model: torch.nn.Module, sequences: Sequence[Sequence[int]], names: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of the trainable parameters: F_i = (1/N) sum_n (dl_n / dtheta_i)^2.

    l_n is the mean next-token negative log-likelihood of sequence n (its own tokens as labels), so
    each sequence weighs the same whatever its length. The gradients are per sample (one backward per
    sequence): that is the textbook empirical Fisher, an expectation of squared per-example score
    vectors. Avalanche's EWCPlugin squares per-batch gradients instead, which is cheaper but estimates
    something smaller: the square of a batch mean is roughly 1/B of the mean of squares, and the
    cross-sample cancellation depends on the batch size. The cost here is paid once per run (the
    result is cached in the run dir), so the textbook estimator is used.

    The model runs in eval mode (no dropout or NEFTune). ``names`` restricts the output (default: all
    parameters with requires_grad). Returns float32 tensors on the CPU.
    """
    named = dict(model.named_parameters())
    names = list(names) if names is not None else [n for n, p in named.items() if p.requires_grad]
    params = [named[n] for n in names]
    fisher = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    device = params[0].device
    used = 0
    with eval_mode(model), Progress(transient=True) as progress:
        task = progress.add_task("EWC Fisher", total=len(sequences))
        for seq in sequences:
            progress.advance(task)
            if len(seq) < 2:
                continue
            ids = torch.tensor([list(seq)], device=device)
            loss = cross_entropy(model(input_ids=ids).logits, ids)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            grads = [torch.zeros_like(f) if g is None else g.float() for g, f in zip(grads, fisher)]
            torch._foreach_addcmul_(fisher, grads, grads)
            used += 1
    if used == 0:
        raise UserError("EWC: no reference sequence has 2 or more tokens; the Fisher corpus is empty")
    torch._foreach_div_(fisher, float(used))
    return {n: f.cpu() for n, f in zip(names, fisher)}


def fisher_sequences(
    texts: Sequence[str], tokenizer: "PreTrainedTokenizerBase", samples: int, max_length: int, seed: int
) -> list[list[int]]:
    """Up to ``samples`` texts drawn with ``seed`` (all of them when fewer), tokenized and cut to max_length."""
    idx = list(range(len(texts)))
    if len(idx) > samples:
        idx = sorted(random.Random(seed).sample(idx, samples))
    return [tokenizer(texts[i], add_special_tokens=False)["input_ids"][:max_length] for i in idx]


def load_or_compute_fisher(
    model: torch.nn.Module,
    names: Sequence[str],
    path: Path,
    sequences_fn: Callable[[], list[list[int]]],
    meta: dict[str, str],
) -> dict[str, torch.Tensor]:
    """The Fisher saved at ``path`` (this run's dir) when it matches ``meta`` and the parameters;
    otherwise compute it from ``sequences_fn()`` and save it there (safetensors, written atomically).
    """
    meta = {"format": _FISHER_FORMAT, **meta}
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            saved_meta = f.metadata() or {}
        fisher = load_file(str(path))
        shapes = {n: p.shape for n, p in model.named_parameters()}
        if saved_meta == meta and set(fisher) == set(names) and all(fisher[n].shape == shapes[n] for n in names):
            log.info("EWC: reusing the Fisher in %s", path)
            return fisher
        log.warning("EWC: %s was made for another corpus, sample count or model; recomputing it", path)
    fisher = diagonal_fisher(model, sequences_fn(), names)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({n: t.contiguous() for n, t in fisher.items()}, str(tmp), metadata=meta)
    tmp.replace(path)
    return fisher


# --------------------------------------------------------------------------------------------------
# KL to the base model


class KLToBase:
    """beta * mean over selected positions of a KL between the tuned and the base next-token
    distributions, p_tuned = softmax(tuned logits) and p_base = softmax(base logits), full vocabulary:

    - ``forward``: KL(p_base || p_tuned) = sum_v p_base,v (log p_base,v - log p_tuned,v). Mass-covering:
      the tuned model is pushed to keep probability wherever the base had it (as in distillation).
    - ``reverse``: KL(p_tuned || p_base) = sum_v p_tuned,v (log p_tuned,v - log p_base,v). Mode-seeking,
      the form of the KL term in RLHF objectives (e.g. InstructGPT, Ouyang et al. 2022).

    Gradients flow through the tuned logits only. Positions (t predicts token t+1):

    - ``response``: positions with a trained target (labels[t+1] != -100): the SFT responses, and replay
      text, which is trained in full.
    - ``replay``: those positions inside replay examples (batch key ``replay_mask``).
    - ``all``: every real position, prompts included: the attention mask's; in a packed batch (no
      mask) every position except the padding tail (the collator's last, all-pad document of a row),
      which is found with ``pad_token_id``.

    The base is the frozen starting model: for a PEFT model, the same model under
    ``disable_adapter()`` (no second copy in memory); otherwise a frozen deep copy made here. The base
    runs in eval mode (no dropout, no NEFTune), so at the first step, when the tuned model equals the
    base and its own forward is deterministic, the penalty is 0. It gets the tuned forward's inputs
    (``position_ids``, ``attention_mask``) and ``use_cache=False``, which transformers needs to build
    the per-document mask of a packed batch. Its output head runs on the selected positions only.
    Under FSDP2, :meth:`bind` shards the frozen copy the way accelerate sharded the model (the PEFT
    base needs nothing: it is the sharded model itself with its adapter off).

    With ``on`` response or replay the selected positions are all scored ones, so the trainer may run
    the tuned model's head on scored positions only (``scored_logits_suffice``); the KL then reads the
    gathered logits (see ``SCORED_POSITIONS_KEY``).
    """

    name = "kl_to_base"

    def __init__(
        self,
        model: torch.nn.Module,
        beta: float,
        direction: Literal["forward", "reverse"] = "forward",
        on: Literal["response", "replay", "all"] = "response",
        pad_token_id: int | None = None,
    ) -> None:
        from peft import PeftModel

        if direction not in ("forward", "reverse"):
            raise ValueError(f"unknown KL direction {direction!r}")
        if on not in ("response", "replay", "all"):
            raise ValueError(f"unknown KL positions {on!r}")
        self.beta = beta
        self.direction = direction
        self.on = on
        self.pad_token_id = pad_token_id
        self.scored_logits_suffice = on != "all"
        self.peft_model = model if isinstance(model, PeftModel) else None
        self.base_copy: torch.nn.Module | None = None
        if self.peft_model is None:
            # Build this before NEFTune is attached, or the copy carries its hooks (inert in eval mode).
            self.base_copy = copy.deepcopy(model).eval().requires_grad_(False)
        self.bound = False
        self.base_sharded = False

    def bind(self, model: torch.nn.Module, accelerator: "Accelerator | None" = None) -> None:
        """Follow the wrapped model: a frozen base copy is sharded like it under FSDP2 (each rank then
        holds its shards only) or moved beside it otherwise. Idempotent."""
        from peft import PeftModel

        if self.bound:
            return
        if self.peft_model is not None and isinstance(model, PeftModel):
            self.peft_model = model
        elif self.base_copy is not None:
            if is_fsdp2(model):
                if accelerator is None:
                    raise ValueError("sharding the KL base like an FSDP2 model needs the run's accelerator")
                self.base_copy = shard_module_like(self.base_copy, accelerator)
                self.base_sharded = True
            else:
                self.base_copy.to(local(next(model.parameters())).device)
        self.bound = True

    def state_tensors(self) -> list[torch.Tensor]:
        """The frozen base copy's parameters as this rank holds them (none for a PEFT model)."""
        return list(self.base_copy.parameters()) if self.base_copy is not None else []

    def _base_logits(self, inputs: dict[str, torch.Tensor], sel: torch.Tensor) -> torch.Tensor:
        """The base model's logits at the ``sel`` [B, T] positions, [M, V] in row-major order."""
        model_inputs = {k: v for k, v in inputs.items() if k not in NOT_MODEL_INPUTS}
        model = self.peft_model if self.peft_model is not None else self.base_copy
        assert model is not None
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None

        def gather(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            # Vocabulary-wide logits only where the KL is taken; hidden states align with sel from the right.
            hidden = args[0]
            return (hidden[:, hidden.size(1) - sel.size(1) :][sel].unsqueeze(0), *args[1:])

        handle = head.register_forward_pre_hook(gather) if head is not None else None
        try:
            with ExitStack() as stack:
                if self.peft_model is not None:
                    stack.enter_context(self.peft_model.disable_adapter())
                    stack.enter_context(eval_mode(self.peft_model))
                stack.enter_context(torch.no_grad())
                logits = model(**model_inputs, use_cache=False).logits
        finally:
            if handle is not None:
                handle.remove()
        if self.base_sharded and model is self.base_copy:
            reshard(model)  # no backward follows this forward to free its gathered weights
        if head is None:
            return logits[:, logits.size(1) - sel.size(1) :][sel]
        return logits[0]

    def positions(self, inputs: dict[str, torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
        """The [B, T] bool mask of logit positions the KL is taken at."""
        batch, length = shape
        device = inputs["input_ids"].device
        if self.on == "all":
            mask = inputs.get("attention_mask")
            if mask is not None and mask.dim() == 2:
                return mask.bool()
            sel = torch.ones(batch, length, dtype=torch.bool, device=device)
            position_ids = inputs.get("position_ids")
            if position_ids is not None and self.pad_token_id is not None:
                sel &= ~packed_padding(inputs["input_ids"], position_ids, self.pad_token_id)
            return sel
        labels = inputs["labels"]
        sel = torch.zeros(batch, length, dtype=torch.bool, device=device)
        sel[:, :-1] = labels[:, 1:] != IGNORE_INDEX
        if self.on == "replay":
            replay = inputs.get(REPLAY_MASK_KEY)
            if replay is None:
                raise ValueError(f"kl_to_base on: replay needs the batch key {REPLAY_MASK_KEY!r}")
            replay = replay.bool()
            if replay.dim() == 1:
                replay = replay.unsqueeze(1).expand(batch, length)
            # Position t predicts token t+1, so it belongs to the example that token t+1 is in.
            sel[:, :-1] &= replay[:, 1:]
        return sel

    def penalty(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        """beta * mean KL at the selected positions of the whole (all-rank) batch (0 when there are none)."""
        batch, length = inputs["input_ids"].shape
        sel = self.positions(inputs, (batch, length))
        scored = inputs.get(SCORED_POSITIONS_KEY)
        if scored is not None:
            # Gathered logits [1, N+1, V]: row i is the i-th scored position; sel is a subset of those.
            tuned = outputs.logits[0, :-1][sel[scored]]
        else:
            # Prompt tuning prepends virtual tokens to the tuned output: keep the positions of real input.
            tuned = outputs.logits[:, -length:][sel]
        base = self._base_logits(inputs, sel)
        log_tuned = F.log_softmax(tuned.float(), dim=-1)
        log_base = F.log_softmax(base.float(), dim=-1)
        if self.direction == "forward":
            kl = F.kl_div(log_tuned, log_base, log_target=True, reduction="sum")
        else:
            kl = F.kl_div(log_base, log_tuned, log_target=True, reduction="sum")
        # The mean over the whole data-parallel batch, as the task loss is: each rank divides its sum by
        # every rank's count, times the rank count that DDP / FSDP divide the averaged gradient by.
        count, ranks = count_over_ranks(sel.sum())
        return self.beta * kl * ranks / count.clamp(min=1)


# --------------------------------------------------------------------------------------------------
# From a config
