"""Trainer callbacks: rich progress bars, ``metrics.jsonl``, and per-epoch dataset refresh.

transformers' own tqdm bars and log printer are switched off (``disable_tqdm``, and the recipe removes
``PrinterCallback``); :class:`RichProgress` replaces both on the main process only.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from sftlab.io import write_atomic


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class RichProgress(TrainerCallback):
    """One bar for optimizer steps (with the latest loss) and a transient bar for each evaluation."""

    def __init__(self, console: Console | None = None, description: str = "train") -> None:
        self.console = console or Console(stderr=True)
        self.description = description
        self.progress: Progress | None = None
        self.train_task: TaskID | None = None
        self.eval_task: TaskID | None = None

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.progress.start()
        self.train_task = self.progress.add_task(
            self.description, total=state.max_steps, completed=state.global_step, info=""
        )

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.progress is not None and self.train_task is not None:
            self.progress.update(self.train_task, completed=state.global_step)

    def on_prediction_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        eval_dataloader: Any = None,
        **kwargs: Any,
    ) -> None:
        if self.progress is None:
            return
        if self.eval_task is None:
            total = len(eval_dataloader) if hasattr(eval_dataloader, "__len__") else None
            self.eval_task = self.progress.add_task("eval", total=total, info="")
        self.progress.advance(self.eval_task)

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.progress is not None and self.eval_task is not None:
            self.progress.remove_task(self.eval_task)
            self.eval_task = None

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.progress is None or not logs:
            return
        if "loss" in logs and self.train_task is not None:
            self.progress.update(self.train_task, info=f"loss {_fmt(logs['loss'])}")
        if any(k.startswith("eval_") for k in logs):
            # eval_loss is cross-entropy under every loss; eval_objective is the loss being trained.
            shown = "  ".join(f"{k} {_fmt(v)}" for k, v in logs.items() if k.endswith(("loss", "objective")))
            self.progress.console.print(f"step {state.global_step}: {shown}")

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class MetricsJsonl(TrainerCallback):
    """Append every log event to ``path`` as one JSON object per line, with its step and epoch.

    On resume the file is cut back to the checkpoint's step, so steps that the interrupted run logged
    after its last checkpoint (and that the resumed run repeats) appear once.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not self.path.is_file():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if state.global_step > 0 and line.strip() and json.loads(line).get("step", 0) <= state.global_step
        ]
        write_atomic(self.path, "".join(f"{line}\n" for line in kept))

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        # NaN/inf are not JSON; write them as null rather than produce a file that strict readers reject.
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(clean) + "\n")


class DatasetEpoch(TrainerCallback):
    """Call ``train_dataset.set_epoch(epoch)`` at the start of every epoch (also on resume).

    accelerate forwards ``set_epoch`` to a map-style dataset only in single-process runs; under DDP it
    stops at the sampler. Re-mixing (replay), re-augmenting and re-packing per epoch need it everywhere.
    """

    def __init__(self, dataset: Any, log: Callable[[dict[str, float]], None] | None = None) -> None:
        self.dataset = dataset
        self.log = log

    def on_epoch_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        # state.epoch is a float (epochs done so far); its floor is the epoch now starting, also mid-epoch on resume.
        self.dataset.set_epoch(int(math.floor(state.epoch or 0.0)))
        stats = getattr(self.dataset, "stats", None)
        if self.log is not None and stats is not None:
            # The epoch's data (rows, real-token fraction, replay share, truncation) goes to metrics.jsonl.
            self.log({f"data/{k}": v for k, v in stats.as_dict().items()})


def summarize_logs(history: list[dict[str, Any]], key: str) -> tuple[float | None, float | None]:
    """First and last value of ``key`` in a Trainer log history (None when never logged)."""
    values = [h[key] for h in history if key in h]
    return (values[0], values[-1]) if values else (None, None)


def attach_callbacks(trainer: Any, run_dir: Path, description: str) -> None:
    """Swap transformers' console printer for the rich bar, and log every event to ``metrics.jsonl``."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(RichProgress(description=description))
    trainer.add_callback(MetricsJsonl(run_dir / "metrics.jsonl"))


def disable_library_bars() -> None:
    """Turn off transformers' own tqdm bars (weight loading, shard writing): rich bars replace them."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


class _PackedPaddingFilter(logging.Filter):
    """Drops transformers' "pass an attention_mask, your input_ids may be padded" warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "We strongly recommend passing in an `attention_mask`" not in record.getMessage()


def quiet_packed_padding_warning() -> None:
    """Packed batches carry no attention mask on purpose: position ids that restart per document make
    transformers build the block-diagonal mask, and the padding tail is a document of its own with no
    labels. transformers sees pad ids without a mask and warns; for packed runs that warning is wrong."""
    logger = logging.getLogger("transformers.modeling_utils")
    if not any(isinstance(f, _PackedPaddingFilter) for f in logger.filters):
        logger.addFilter(_PackedPaddingFilter())
