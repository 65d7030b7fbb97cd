"""Penalties added to the task loss to keep the tuned model near its base.

A regularizer is any object with a ``name`` and a ``penalty(model, inputs, outputs)`` that returns a
scalar tensor; the trainer adds every penalty to the task loss and logs each one by name.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Regularizer(Protocol):
    """One additive penalty term."""

    name: str

    def penalty(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        """The penalty for this step; ``outputs`` is the model's forward output on ``inputs``."""
        ...
