"""Pieces every benchmark script uses: where the shared data is, a step timer, and a mute for setup chatter."""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from sftlab.offline import set_offline

set_offline()  # before transformers is imported: benchmarks never touch the network

from transformers import TrainerCallback  # noqa: E402

from sftlab.data.shared import locate_shared_data  # noqa: E402
from sftlab.errors import UserError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def shared_data() -> Path:
    """The shared public data sets (``../shared/data``, see :mod:`sftlab.data.shared`); exits with the
    places it tried when they are missing."""
    try:
        return locate_shared_data(REPO)
    except UserError as exc:
        print(f"{Path(sys.argv[0]).name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None  # the CLI's exit status for a user error


class StepTimer(TrainerCallback):
    """Wall time and non-padding input tokens between the end of step ``warmup`` and of ``warmup + steps``."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.start: tuple[float, int] | None = None
        self.result: tuple[float, int] | None = None  # (seconds, tokens)
        self.warmup_seconds: list[float] = []  # each warm-up step's wall time (a compile shows up here)
        self._step_start = 0.0

    def on_step_begin(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
        self._step_start = time.perf_counter()

    def on_step_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step <= self.warmup:
            self.warmup_seconds.append(time.perf_counter() - self._step_start)
        if state.global_step == self.warmup:
            self.start = (time.perf_counter(), state.num_input_tokens_seen)
        elif state.global_step == self.warmup + self.steps and self.start is not None:
            t0, n0 = self.start
            self.result = (time.perf_counter() - t0, state.num_input_tokens_seen - n0)


def matmul_gflops(dtype_name: str, n: int = 2048, reps: int = 4) -> float:
    """The rate of an ``n`` x ``n`` matmul in ``dtype_name`` (float32 or bfloat16), in GFLOP/s (2 n^3 per
    product), best of ``reps`` after one warm-up: the machine's matrix-unit ceiling at its current load."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def rss_mb(field: str = "VmRSS") -> float:
    """This process's ``field`` of /proc/self/status (``VmRSS`` now, ``VmHWM`` its peak), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux), so a peak can be read per measurement in one process."""
    Path("/proc/self/clear_refs").write_text("5")


def load_average() -> str:
    """The 1/5/15-minute load averages, as ``uptime`` prints them."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


class Quiet:
    """Mute a contender's setup chatter (summary tables, progress bars, warnings); timing is unaffected."""

    def __enter__(self) -> None:
        self._stdout = sys.stdout
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - closed in __exit__
        warnings.simplefilter("ignore")

    def __exit__(self, *exc: object) -> None:
        sys.stdout.close()
        sys.stdout = self._stdout
        warnings.resetwarnings()
