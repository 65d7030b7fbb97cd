"""A model reference resolved once: the name a user wrote, the source loaders read, and the model's identity.

A recipe resolves each model it is given once, at its entry point (:func:`resolve_model`), and passes the
:class:`ModelRef` on. It is not done while the config is validated: resolving a built-in name or a
``.gguf`` file converts it (half a minute, and a cache write) the first time, which loading or checking a
config (``sftlab data check``, a sweep that is only planned) must not do.

The fingerprint (:func:`model_fingerprint`) is what caches and a sweep's settings hash key on. A dir
converted from a GGUF file is identified by that file's SHA-256, so the same built-in model converted
under another ``$SFTLAB_CACHE`` is the same model; any other local dir by its weight and config files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from sftlab.models.builtin import resolve_model_source
from sftlab.models.gguf import SOURCE_FILE
from sftlab.models.load import adapter_base_path, is_adapter_dir

_WEIGHT_FILES = ("*.safetensors", "config.json", "adapter_config.json", "generation_config.json")


@dataclass(frozen=True)
class ModelRef:
    """A model as the user named it (``name``), the source loaders read (``path``: a local dir, converted
    if it was a GGUF file, or a hub id) and its identity (``fingerprint``)."""

    name: str
    path: str
    fingerprint: str


def resolve_model(name_or_path: str, gguf_file: str | None = None) -> ModelRef:
    """Resolve a built-in name, a ``.gguf`` file (or a dir plus ``gguf_file``), a model or adapter dir or a
    hub id into a :class:`ModelRef`; a GGUF file is converted the first time (then cached)."""
    path = resolve_model_source(name_or_path, gguf_file)
    return ModelRef(name=name_or_path, path=path, fingerprint=model_fingerprint(path))


def _conversion_sha256(path: Path) -> str | None:
    """The source file's SHA-256 recorded in a converted dir, or None for any other dir."""
    record = path / SOURCE_FILE
    if not record.is_file():
        return None
    sha = json.loads(record.read_text(encoding="utf-8")).get("sha256")
    return sha if isinstance(sha, str) and sha else None


def model_fingerprint(name_or_path: str) -> str:
    """A short hash of a model's identity.

    - a dir converted from a GGUF file: that file's SHA-256 (the conversion is deterministic and checked,
      and where the cache lives says nothing about the model);
    - any other local dir: its path and the names, sizes and mtimes of its weight and config files, which
      change whenever a training run rewrites the weights (cheap: no hashing of gigabytes);
    - an adapter dir: as any dir, plus its base's fingerprint;
    - a hub id (no local dir): its name.
    """
    path = Path(resolve_model_source(name_or_path))
    if not path.is_dir():
        parts: list[object] = [name_or_path]
    elif (sha := _conversion_sha256(path)) is not None:
        parts = ["gguf", sha]
    else:
        files = sorted({f for pattern in _WEIGHT_FILES for f in path.glob(pattern)})
        parts = [str(path.resolve())] + [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        if is_adapter_dir(path):
            parts.append(model_fingerprint(adapter_base_path(path)))
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]
