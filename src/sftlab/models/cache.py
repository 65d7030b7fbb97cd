"""The cache root: where converted models, base answers and rewrites are kept between runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$SFTLAB_CACHE`` if set, else ``~/.cache/sftlab``."""
    return Path(os.environ.get("SFTLAB_CACHE") or Path.home() / ".cache" / "sftlab").expanduser()
