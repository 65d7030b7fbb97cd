"""What the output head computes in training: logits kept in autocast's dtype, and only at scored positions.

Both serve ``SFTLabTrainer.compute_loss``; FreeLB (``sftlab.train.adversarial``) and the benches reuse
:func:`scored_positions_only`.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import torch
from accelerate.utils.operations import ConvertOutputsToFp32

from sftlab.models.tokens import IGNORE_INDEX


def keep_autocast_outputs(model: torch.nn.Module) -> None:
    """Let a mixed-precision model's outputs keep autocast's dtype: remove the float32 cast that accelerate
    wraps around its forward (``ConvertOutputsToFp32``), and keep the autocast inside it.

    Every loss and regularizer here upcasts its own vocabulary-wide work to float32, a slice at a time
    (the sliced cross-entropy) or where it reads the logits; the wrapper's cast instead copies the whole
    [N, V] bf16 logits to float32 in the forward, and makes autograd copy their float32 gradient back to
    bf16 in the backward: two passes over 52 MB a step on SmolLM2 at 8 x 96. The values are the same,
    since bf16 to float32 is exact. Looks through ``.module`` (DDP, DeepSpeed); a no-op for a model
    accelerate did not wrap, and after the first call.
    """
    while model is not None:
        inner = getattr(model.__dict__.get("forward"), "__wrapped__", None)
        if isinstance(inner, ConvertOutputsToFp32):
            forward = inner.model_forward
            model.forward = forward if hasattr(forward, "__self__") else types.MethodType(forward, model)
            return
        model = getattr(model, "module", None)


@contextlib.contextmanager
def scored_positions_only(head: torch.nn.Module, labels: torch.Tensor) -> Iterator[torch.Tensor]:
    """Run the output head only on the positions the loss scores; yields the labels that go with them.

    Position t's logits predict label t+1, so only positions with ``labels[:, t+1] != -100`` are ever
    scored. With completion-only loss most positions are prompt: computing (and backpropagating) their
    vocabulary-wide logits and log-softmax is wasted work, a large share of a small model's step.
    A forward pre-hook on the head gathers the scored hidden states, in row-major order, into one
    sequence ``[1, N+1, d]`` (the last row is a zero that no label scores); the yielded labels
    ``[1, N+1]`` are ``[-100, targets...]``, so any shifting LossFn (cross-entropy, label smoothing,
    GEM, DFT) scores exactly the same (logit, target) pairs as on the full ``[B, T, V]`` logits.
    Virtual tokens that prompt tuning prepends are skipped: hidden states are aligned to the labels
    from the right.
    """
    keep = labels[:, 1:] != IGNORE_INDEX
    targets = labels[:, 1:][keep]
    gathered_labels = torch.cat([targets.new_full((1,), IGNORE_INDEX), targets]).unsqueeze(0)

    def gather(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        hidden = args[0]
        offset = hidden.size(1) - labels.size(1)
        scored = hidden[:, offset:-1][keep]
        return (torch.cat([scored, scored.new_zeros(1, scored.size(-1))]).unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        yield gathered_labels
    finally:
        handle.remove()
