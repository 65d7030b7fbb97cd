"""The remedies, composed from a train config: their keys into ``TrainConfig``, their builders into a run.

Adding a remedy is one new file in this package (a :class:`~sftlab.train.remedies.base.Remedy` named ``REMEDY``)
and one line in :data:`REMEDIES` (plus its module in the import). Nothing else changes: ``TrainConfig`` takes its
keys, ``prepare_train`` calls its builder at its stage, the setup table shows its phrase.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from sftlab.train.remedies import (
    adversarial,
    augment,
    cross_entropy,
    dft,
    eaft,
    ewc,
    gem,
    kl_to_base,
    l2sp,
    label_smoothing,
    neftune,
    presets,
    replay,
    tofu,
    weight_rounding,
)
from sftlab.train.remedies.base import STAGES, Attached, FieldSpec, Remedy, RemedyContext, Stage

if TYPE_CHECKING:
    from sftlab.config import TrainConfig
    from sftlab.train.losses import LossFn
    from sftlab.train.trainer import SFTLabTrainer

# Every remedy, one line each. Remedies act stage by stage (base.STAGES); within a stage, in this order.
REMEDIES: tuple[Remedy, ...] = (
    cross_entropy.REMEDY,
    label_smoothing.REMEDY,
    gem.REMEDY,
    dft.REMEDY,
    eaft.REMEDY,
    tofu.REMEDY,
    replay.REMEDY,
    augment.REMEDY,
    l2sp.REMEDY,
    ewc.REMEDY,
    kl_to_base.REMEDY,  # before the hooks below: its frozen copy of the model must carry none of them
    neftune.REMEDY,
    adversarial.REMEDY,
    weight_rounding.REMEDY,
)


def remedy_fields(remedies: tuple[Remedy, ...] = REMEDIES) -> dict[str, FieldSpec]:
    """The TrainConfig keys of the remedies: ``preset``, ``loss`` (one of the loss variants) and each one's own."""
    losses = tuple(r.loss for r in remedies if r.loss is not None)
    fields: dict[str, FieldSpec] = {"preset": presets.FIELD, "loss": (Literal[losses], Field(losses[0]))}
    for remedy in remedies:
        for name, spec in remedy.fields.items():
            assert name not in fields, f"remedy {remedy.key}: key {name!r} is another remedy's"
            fields[name] = spec
    return fields


def expand_presets(data: dict[str, Any]) -> dict[str, Any]:
    """A raw config mapping with its ``preset`` expanded (see :mod:`sftlab.train.remedies.presets`)."""
    return presets.expand_preset(data)


def check_remedies(cfg: TrainConfig) -> None:
    """Each remedy's check of its keys against the rest of the config (ValueError: a config error)."""
    for remedy in REMEDIES:
        if remedy.check is not None:
            remedy.check(cfg)


def active_remedies(cfg: TrainConfig, stage: Stage | None = None) -> list[Remedy]:
    """The remedies ``cfg`` turns on, ordered by stage (then by :data:`REMEDIES`), or those of one ``stage``."""
    on = [r for r in REMEDIES if r.is_active(cfg) and (stage is None or r.stage == stage)]
    return sorted(on, key=lambda r: STAGES.index(r.stage))


def describe_remedies(cfg: TrainConfig) -> list[str]:
    """One short phrase per remedy the config turns on, in the order they act (the preset first)."""
    phrases = [presets.describe_preset(cfg)] + [r.describe(cfg) for r in active_remedies(cfg)]
    return [p for p in phrases if p]


def build_loss(cfg: TrainConfig) -> LossFn:
    """The token loss ``cfg.loss`` names (stage ``before_trainer``)."""
    (remedy,) = active_remedies(cfg, "before_trainer")
    assert remedy.build is not None
    return remedy.build(RemedyContext(cfg))


def dataset_arguments(ctx: RemedyContext) -> dict[str, Any]:
    """Stage ``data``: the keyword arguments the remedies add to ``sftlab.data.dataset.build_train_dataset``."""
    out: dict[str, Any] = {}
    for remedy in active_remedies(ctx.cfg, "data"):
        if remedy.build is not None:
            out.update(remedy.build(ctx))
    return out


def attach_remedies(ctx: RemedyContext, stage: Literal["after_trainer", "before_compile"]) -> None:
    """Stages ``after_trainer`` and ``before_compile``: build each remedy and wire what it returns into the trainer."""
    assert ctx.trainer is not None
    for remedy in active_remedies(ctx.cfg, stage):
        if remedy.build is not None:
            install(remedy.build(ctx), ctx.trainer)


def install(attached: Attached, trainer: SFTLabTrainer) -> None:
    """Put what a remedy built where the trainer reads it."""
    if attached.penalty is not None:
        trainer.regularizers.append(attached.penalty)
    if attached.step is not None:
        trainer.adversary = attached.step
    if attached.callback is not None:
        trainer.add_callback(attached.callback)
    if attached.log_values is not None:
        trainer.log_sources.append(attached.log_values)
    if attached.weight_dither is not None:
        trainer.weight_dither = attached.weight_dither
