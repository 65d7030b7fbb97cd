"""Sentence embeddings from a local encoder dir, for embedding diversity.

Mean pooling of the last hidden state over real (non-pad) tokens, as sentence-transformers does for
its mean-pooling models; cosine similarity makes the scale irrelevant. The model is loaded with plain
transformers from safetensors, no remote code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from sftlab.errors import UserError


class Embedder:
    """Embeds texts with the encoder at ``path`` (a local dir)."""

    def __init__(self, path: str, device: str = "cpu", max_length: int = 256) -> None:
        if not Path(path).is_dir():
            raise UserError(f"embedding_model must be a local model dir, not found: {path}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path, use_safetensors=True).to(device).eval()
        except OSError as exc:
            raise UserError(f"{path}: could not load the embedding model ({exc})") from None
        self.device = device
        self.max_length = max_length

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """(len(texts), hidden) float32 mean-pooled embeddings."""
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0))
        return torch.cat(out).cpu().numpy() if out else np.zeros((0, 0), dtype=np.float32)
