"""A training run's directory on disk: its layout, atomic publishing of checkpoints and of the final model.

A directory is written under a temporary name, flushed to disk, then renamed into place, so a run killed
mid-save never leaves a half-written ``checkpoint-N`` or model dir that a later step would read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

from sftlab.io import replace_dir, restore_aside, staging_dir
from sftlab.train.distributed import full_state_dict

STAGING_DIR = ".staging"
TRAIN_TIME_FILE = "sftlab_train_seconds.json"  # in each checkpoint: training wall time up to that step
TRASH_DIR = ".trash"


def share_permissions(path: Path) -> None:
    """Give files the permissions the umask allows (safetensors writes them 0600 through a temp file)."""
    umask = os.umask(0)
    os.umask(umask)
    for file in path.rglob("*"):
        if file.is_file():
            file.chmod(0o666 & ~umask)


def last_complete_checkpoint(checkpoints_dir: str | Path) -> str | None:
    """The newest ``checkpoint-N`` under ``checkpoints_dir`` (``.staging`` leftovers never count)."""
    path = Path(checkpoints_dir)
    return get_last_checkpoint(str(path)) if path.is_dir() else None


def recorded_train_seconds(checkpoint: str | Path) -> float:
    """The training time a checkpoint recorded; 0 for one written before checkpoints recorded it."""
    path = Path(checkpoint) / TRAIN_TIME_FILE
    return float(json.loads(path.read_text())["train_seconds"]) if path.is_file() else 0.0


def save_final(trainer: Trainer, out_dir: Path) -> Path:
    """Save the trained model (full dir, or adapter dir for PEFT) with its tokenizer, atomically.

    ``trainer.save_model`` runs on every rank (FSDP/DeepSpeed gather there); the main process then
    renames the finished dir into place. A previous model dir is renamed aside first and deleted only once
    the new one is in place, so a crash at any point leaves a whole model dir (the old one, or the new one,
    or the old one under ``.<name>.old`` next to a finished ``.<name>.partial``, which the next save sorts out).
    """
    staged = out_dir.parent / f".{out_dir.name}.partial"
    if trainer.args.should_save:
        restore_aside(out_dir)  # a crash inside an earlier replace_dir: the old model comes back first
        staging_dir(out_dir)
    trainer.accelerator.wait_for_everyone()
    with full_state_dict(trainer.accelerator):  # a plain model dir even when FSDP checkpoints are sharded
        trainer.save_model(str(staged))
    trainer.accelerator.wait_for_everyone()
    if trainer.args.should_save:
        # The Trainer pickles its arguments beside the weights; the run's config.yaml already records them,
        # and a model dir meant for sharing should hold nothing that needs unpickling.
        (staged / "training_args.bin").unlink(missing_ok=True)
        share_permissions(staged)
        replace_dir(staged, out_dir)
    trainer.accelerator.wait_for_everyone()
    return out_dir
