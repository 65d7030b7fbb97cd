"""`sftlab train` that stops still once checkpoint N is in place, on every rank, until it is killed.

For tests that must kill a multi-process run at a known point: ``torchrun ... tests/torchrun_pause.py N
config.yaml``. A kill timed by polling alone can come too late on a loaded machine (the run may already
have finished); here each rank sleeps in ``on_save`` at step N, after the checkpoint was renamed into place.
With ``SFTLAB_PAUSE_RANK=R`` only rank R sleeps; the others train on and wait for it in their next
collective, as the ranks of a run do when one of them stalls. Every rank leaves ``worker.<pid>`` beside the
config at its start.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

import sftlab.recipes.train as recipe
from sftlab.cli import main
from sftlab.train.trainer import SFTLabTrainer


class PauseAfterSave(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201 - the TrainerCallback signature
        only = os.environ.get("SFTLAB_PAUSE_RANK")
        if state.global_step == self.step and (only is None or only == os.environ.get("RANK")):
            # torchrun starts its workers in their own sessions, out of reach of a kill of torchrun's group:
            # each rank leaves its pid beside the config so the test can kill it too.
            Path(sys.argv[2]).with_name(f"paused.{os.getpid()}").touch()
            time.sleep(3600)


class PausingTrainer(SFTLabTrainer):
    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.add_callback(PauseAfterSave(int(sys.argv[1])))


if __name__ == "__main__":
    Path(sys.argv[2]).with_name(f"worker.{os.getpid()}").touch()
    recipe.SFTLabTrainer = PausingTrainer
    sys.exit(main(["--offline", "train", sys.argv[2]]))
