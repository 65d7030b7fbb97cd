"""Run the sftlab CLI, stopping still at the Nth call of a named function, so that a test can kill it there.

``python tests/pause_at.py MARKER MODULE:FUNCTION N ARGS...`` runs ``sftlab ARGS...``; when FUNCTION of
MODULE is called for the Nth time, the process touches MARKER and sleeps until it is killed. A kill timed
by polling alone can come too late on a loaded machine (the step may already be over).
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

from sftlab.cli import main


def pause_at(marker: Path, target: str, n: int) -> None:
    module_name, name = target.split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, name)
    calls = {"n": 0}

    def paused(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - stands in for any function
        calls["n"] += 1
        if calls["n"] == n:
            marker.touch()
            time.sleep(3600)
        return original(*args, **kwargs)

    setattr(module, name, paused)


if __name__ == "__main__":
    pause_at(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
    sys.exit(main(["--offline", *sys.argv[4:]]))
