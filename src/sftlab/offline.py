"""Network policy: telemetry always off; hub access off when asked (tests, demo, ``--offline``)."""

from __future__ import annotations

import os

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def set_offline() -> None:
    """Forbid every Hugging Face library from touching the network for the rest of this process."""
    for var in OFFLINE_VARS:
        os.environ[var] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


def is_offline() -> bool:
    """True when the hub must not be contacted."""
    return any(os.environ.get(var, "").lower() in ("1", "true", "yes") for var in OFFLINE_VARS)
