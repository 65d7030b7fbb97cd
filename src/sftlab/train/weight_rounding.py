"""Dithered bf16 weights: what the forward of a bf16 autocast step sees of the fp32 master weights.

Autocast casts each fp32 weight to bf16 by rounding to nearest. bf16 keeps 8 bits of mantissa, so a
weight of 0.05 sits on a grid of about 2.4e-4, and a fine-tuning step at learning rate 5e-5 moves it by
a fifth of that. Rounded to nearest, most such moves round back to the old value: the fp32 master
weights learn, and the bf16 forward keeps running the model of a few steps before. On SmolLM2 one fp32
AdamW step at 5e-5 lowered the next batch's loss by 6.1% in an fp32 forward and by 4.9% in a bf16 one; the
bf16 run's loss curve sits 0.8-1.3% above fp32's (docs/benchmarks.md). Base models shipped in bf16 have
every weight on that grid, so their first updates vanish entirely.

Dithering rounds each weight up at its own threshold, drawn once from the run's seed, instead of at the
midpoint of its bf16 interval. Over many weights the rounding is then unbiased: a move of a fifth of an
interval, shared by a layer's weights, turns about a fifth of them up by one step, so the forward sees
the update on average. It is stochastic rounding with the randomness fixed in time, so the bf16 view
is a deterministic function of the master weights: no random draw per step (one over 135M weights
costs 0.7 s on 2 CPU cores, more than the rounding), and a resumed run rounds as the killed one did.

Only trainable weights of linear layers are dithered: they are what autocast casts to bf16 for its
matmuls (a tied output head included), and only trained weights move. Norm weights stay fp32 under
autocast, and frozen weights have no updates to lose. Each weight is rounded in place, to an fp32 number
that bf16 holds exactly, for the forward and the backward, and its master is rebuilt bit for bit before
the optimizer step, so it, the checkpoints and the saved model see only the masters. The trainer's
evaluation runs on the dithered weights too, so its eval loss is that of the model the steps trained.
Weight-space penalties (L2-SP, EWC) measure the masters, through :meth:`DitheredBf16.rounding_error`:
on the rounded weights they would count each weight's rounding as a move from the anchor.

Inference has the same blind spot: cast to nearest, a fine-tuned model's small moves away from its base
partly vanish (on the real demo each tuned model's bf16 eval loss was 0.4% above its fp32 one, and 0.0-0.1%
with dithered weights). :func:`dither_in_place` gives the audit the dithered view of a model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

LOW_BITS = 16  # an fp32 number is a bf16 one with 16 more bits of mantissa
HALF = 1 << (LOW_BITS - 1)
KEEP_HIGH = -(1 << LOW_BITS)  # 0xFFFF0000 as an int32: clears the bits bf16 drops
# Elements per slice the rounding works on. Adding an int16 offset to int32 bits makes torch's CPU kernels
# copy the offsets to int32 first: over SmolLM2's tied 49,152 x 576 embedding that is a 113 MB temporary,
# which glibc maps fresh (and the kernel faults in page by page) on every call. Slices of 256k elements keep
# each temporary at 1 MB, inside malloc's reused heap, and the four passes of a rounding inside the cache:
# 0.07 + 0.06 s a step to round and restore SmolLM2's weights on 2 cores, against 0.09 + 0.12 s and 83k page
# faults whole (bench/weight_rounding.py; docs/benchmarks.md, "Page faults").
SLICE = 1 << 18


def resolve_rounding(setting: str, bf16: bool, sharded: bool = False) -> str:
    """``nearest`` or ``dithered`` for a ``bf16_weight_rounding`` setting: ``auto`` is dithered where the
    steps (or the audit) run in bf16 and the weights are not sharded by FSDP or DeepSpeed (untested there),
    and nearest otherwise; an explicit setting stands."""
    if setting != "auto":
        return setting
    return "dithered" if bf16 and not sharded else "nearest"


def linear_weights(model: torch.nn.Module, trainable_only: bool = True) -> list[torch.nn.Parameter]:
    """The fp32 parameters of ``model``'s ``nn.Linear`` modules (only trainable ones by default), once each
    (a tied output head is the embedding's tensor), in module order."""
    seen: set[int] = set()
    chosen = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            for param in module.parameters(recurse=False):
                if (param.requires_grad or not trainable_only) and param.dtype == torch.float32 and id(param) not in seen:
                    seen.add(id(param))
                    chosen.append(param)
    return chosen


def dithered_weights(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters training dithers: trainable fp32 parameters of ``nn.Linear`` modules, once each."""
    return linear_weights(model, trainable_only=True)


def dither_in_place(model: torch.nn.Module, seed: int = 0) -> int:
    """Round every fp32 linear weight of ``model``, trained or not, to a bf16 value in place, each at its
    own threshold drawn from ``seed``: the dithered view, for inference under bf16 autocast (whose cast of
    these values is then exact). Returns how many tensors were rounded.

    Models of one architecture draw the same thresholds for the same weights, so a tuned model and its base
    are seen through one rounding, and the difference between their views is unbiased.
    """
    params = linear_weights(model, trainable_only=False)
    with torch.no_grad():
        for param, offset in zip(params, thresholds(params, seed)):
            round_dithered(param.data, offset, param.data)
    return len(params)


def thresholds(params: list[torch.nn.Parameter], seed: int) -> Iterator[torch.Tensor]:
    """One int16 rounding offset per element of each of ``params``, uniform over [-32768, 32767], drawn in
    order from ``seed`` on the CPU (so every device draws the same) and placed beside its parameter."""
    generator = torch.Generator().manual_seed(seed)
    for param in params:
        yield torch.randint(-HALF, HALF, param.shape, dtype=torch.int16, generator=generator).to(param.device)


def round_dithered(master: torch.Tensor, offset: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Round fp32 ``master`` to bf16 values into fp32 ``out``, rounding up (in magnitude) where the
    dropped 16 bits reach the threshold ``HALF - offset``; ``offset`` is int16 in [-32768, 32767].

    With ``offset`` 0 everywhere this is round-half-up on the magnitude (nearest). An offset drawn
    uniformly gives each weight the chance ``dropped / 65536`` of rounding up: stochastic rounding.
    Adding to the integer bits of a float carries into the exponent when the mantissa overflows, which
    is the correct next bf16 value, and works the same for negative numbers (sign and magnitude).
    """
    for master_part, offset_part, out_part in slices(master, offset, out):
        bits = out_part.view(torch.int32)
        torch.add(master_part.view(torch.int32), offset_part, out=bits)
        bits.add_(HALF).bitwise_and_(KEEP_HIGH)
    return out


def slices(*tensors: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
    """Matching flat slices of at most :data:`SLICE` elements of same-shaped ``tensors``, views that write
    through; the tensors whole when one of them is not contiguous (a flat view would be a copy)."""
    if all(t.is_contiguous() for t in tensors):
        yield from zip(*(t.view(-1).split(SLICE) for t in tensors))
    else:
        yield tensors


class DitheredBf16:
    """Fixed per-weight rounding thresholds for ``params``, applied to the parameters in place.

    Holds, per weight, one int16 offset and one int16 remainder of its rounding: 4 bytes per dithered
    parameter (0.54 GB on SmolLM2-135M's full fine-tuning). The master is rebuilt exactly from its rounded
    value, the remainder and the offset (:func:`restore_master`), so no fp32 copy of the weights is kept.
    """

    def __init__(self, params: list[torch.nn.Parameter], seed: int) -> None:
        self.params = params
        self.offsets = list(thresholds(params, seed))
        self.remainders = [torch.empty(p.shape, dtype=torch.int16, device=p.device) for p in params]
        self._index = {id(p): i for i, p in enumerate(params)}
        self.active = False  # True while the parameters hold their dithered values

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Round every parameter to its dithered bf16 value in place for the duration; the masters are
        rebuilt, bit for bit, after."""
        with torch.no_grad():
            for param, offset, remainder in zip(self.params, self.offsets, self.remainders):
                round_in_place(param.data, offset, remainder)
        self.active = True
        try:
            yield
        finally:
            self.active = False
            with torch.no_grad():
                for param, offset, remainder in zip(self.params, self.offsets, self.remainders):
                    restore_master(param.data, offset, remainder)

    def rounding_error(self, param: torch.Tensor) -> torch.Tensor | None:
        """``master - dithered`` for ``param`` while the dithered values are in place (a constant, exact:
        the two are within one bf16 step), or None when ``param`` is not dithered or nothing is applied.

        A weight-space penalty adds it to the parameter so that it measures the master weights, not their
        rounding: an L2-SP term on dithered weights would count every weight's rounding error as a move.
        """
        i = self._index.get(id(param))
        if i is None or not self.active:
            return None
        with torch.no_grad():
            master = restore_master(param.detach().clone(), self.offsets[i], self.remainders[i])
            return master.sub_(param.detach())


def round_in_place(master: torch.Tensor, offset: torch.Tensor, remainder: torch.Tensor) -> torch.Tensor:
    """:func:`round_dithered` of ``master`` into itself, keeping in int16 ``remainder`` what the rounding
    clears, so that :func:`restore_master` can undo it.

    The rounding adds ``offset + HALF`` to the float's bits and clears the low 16; the remainder is the low
    16 bits of ``master + offset`` (an int32-to-int16 narrowing keeps them), which read as a signed number
    are the cleared bits less ``HALF``.
    """
    for master_part, offset_part, remainder_part in slices(master, offset, remainder):
        bits = master_part.view(torch.int32)
        bits.add_(offset_part)
        remainder_part.copy_(bits)
        bits.add_(HALF).bitwise_and_(KEEP_HIGH)
    return master


def restore_master(rounded: torch.Tensor, offset: torch.Tensor, remainder: torch.Tensor) -> torch.Tensor:
    """Undo :func:`round_in_place` in place: ``rounded`` becomes the master it was rounded from.

    ``rounded = master + offset + HALF - cleared`` and ``remainder = cleared - HALF`` as integers on the
    float's bits, so ``rounded + remainder - offset`` is the master, bit for bit: across an exponent
    boundary (where the rounding carried into the exponent) and for negative numbers alike. Two passes
    over each slice of the weights (0.06 s per step over SmolLM2's weights on 2 cores).
    """
    for rounded_part, offset_part, remainder_part in slices(rounded, offset, remainder):
        rounded_part.view(torch.int32).add_(remainder_part).sub_(offset_part)
    return rounded
