"""What a remedy is: its settings (config keys), the stage where it acts, and a builder.

A remedy is one :class:`Remedy` value, defined in its own file of this package and listed once in
:mod:`sftlab.train.remedies.registry`. The registry composes the remedies' keys into ``TrainConfig`` and, while
a run is set up (``sftlab.recipes.train.prepare_train``), calls the builder of every remedy the config turns on,
stage by stage. What a builder returns depends on its stage:

==================  ================================================  =============================================
stage               when                                              the builder returns
==================  ================================================  =============================================
``data``            while the training rows are built                 keyword arguments for ``build_train_dataset``
``before_trainer``  the Trainer is built with it                      the token loss (a ``LossFn``)
``after_trainer``   the model is on its device, no checkpoint loaded  :class:`Attached`: a penalty, a hook, ...
``before_compile``  after every hook, before ``torch_compile``        :class:`Attached`
==================  ================================================  =============================================

Builders import their heavy modules (torch, the formulas) inside the function: reading a config stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, TrainerCallback

    from sftlab.config import TrainConfig
    from sftlab.train.regularizers import Anchor, Regularizer
    from sftlab.train.trainer import SFTLabTrainer
    from sftlab.train.weight_rounding import DitheredBf16

Stage = Literal["data", "before_trainer", "after_trainer", "before_compile"]
STAGES: tuple[Stage, ...] = get_args(Stage)
# A TrainConfig key a remedy owns, as pydantic.create_model takes it: (annotation, default or Field(...)).
FieldSpec = tuple[Any, Any]


@dataclass
class RemedyContext:
    """What builders may read, and the state remedies share, while one run is set up."""

    cfg: TrainConfig
    tokenizer: PreTrainedTokenizerBase | None = None
    run_dir: Path | None = None
    # The resolved bf16 weight rounding of this run ("nearest" or "dithered"; sftlab.train.weight_rounding).
    weight_rounding: str = "nearest"
    trainer: SFTLabTrainer | None = None  # set once the Trainer exists (stages after_trainer, before_compile)
    _anchor: Anchor | None = field(default=None, repr=False)

    @property
    def pad_token_id(self) -> int | None:
        """The tokenizer's pad id, else its EOS id (what the collator pads with)."""
        tok = self.tokenizer
        if tok is None:
            return None
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def anchor(self) -> Anchor:
        """The trainable weights as training starts, taken once: L2-SP and EWC share one copy."""
        from sftlab.train.regularizers import Anchor

        if self._anchor is None:
            assert self.trainer is not None, "the anchor is taken after the Trainer places the model"
            self._anchor = Anchor(self.trainer.model)
        return self._anchor


@dataclass
class Attached:
    """What an ``after_trainer`` or ``before_compile`` builder adds to the trainer (the registry wires it)."""

    penalty: Regularizer | None = None  # added to the task loss (the Regularizer protocol)
    step: Any = None  # replaces the trainer's inner step (FreeLB: several passes per micro-batch)
    callback: TrainerCallback | None = None
    log_values: Callable[[], dict[str, float]] | None = None  # extra values logged with the loss
    weight_dither: DitheredBf16 | None = None  # how a bf16 forward reads the fp32 master weights


@dataclass(frozen=True)
class Remedy:
    """One remedy, whole.

    ``key`` names it (its config key, or its ``loss:`` value); ``summary`` is its one-line description;
    ``fields`` are the TrainConfig keys it owns; ``describe`` is the phrase the run's setup table shows (None:
    nothing to show); ``check`` raises ValueError for a contradiction between keys (reported as a config
    error). A loss variant sets ``loss`` to the ``loss:`` value that picks it.
    """

    key: str
    stage: Stage
    summary: str
    describe: Callable[[TrainConfig], str | None]
    active: Callable[[TrainConfig], bool] | None = None
    build: Callable[[RemedyContext], Any] | None = None
    fields: Mapping[str, FieldSpec] = field(default_factory=dict)
    check: Callable[[TrainConfig], None] | None = None
    loss: str | None = None

    def is_active(self, cfg: TrainConfig) -> bool:
        """Whether ``cfg`` turns this remedy on (a loss variant: when ``loss`` names it)."""
        if self.loss is not None:
            return cfg.loss == self.loss
        assert self.active is not None, f"remedy {self.key} needs `active` or `loss`"
        return self.active(cfg)
