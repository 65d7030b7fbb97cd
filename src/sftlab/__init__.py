"""sftlab: supervised fine-tuning that keeps what the base model had, and measures what it cost."""

import os

# Telemetry is never wanted, and the hub client reads this at import time, so set it before anything
# imports transformers, datasets or huggingface_hub.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
