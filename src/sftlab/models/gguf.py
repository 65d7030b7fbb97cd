"""A ``.gguf`` file -> a plain Hugging Face model dir (safetensors), converted once and cached.

transformers reads GGUF files (with the ``gguf`` package) and dequantizes their tensors to fp32, but the
model it returns keeps a ``quantization_config`` and refuses ``save_pretrained``, and every load pays the
dequantization again (about 30 s for SmolLM2-135M on 2 cores). So sftlab converts a file once: the
dequantized state dict goes into a fresh model built from the same config without the quantization entry,
and is saved as safetensors beside the tokenizer (with its chat template). The dir is keyed by the file's
SHA-256, so a second use of the same file takes seconds, and a changed file is converted anew.

Nothing in the file is executed: its chat template is stored as text in ``tokenizer_config.json`` and is
only ever rendered by transformers' sandboxed Jinja environment (``apply_chat_template``); weights and
metadata are read by the ``gguf`` package's reader, which parses a binary format with no code in it.

Every conversion is checked: the converted dir's logits must equal the GGUF-loaded model's within
:data:`LOGIT_TOLERANCE` on a fixed input, and the figure is recorded in ``sftlab_source.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sftlab.errors import UserError
from sftlab.models.cache import cache_root

LOGIT_TOLERANCE = 1e-5
SOURCE_FILE = "sftlab_source.json"
# A fixed, tokenizer-independent probe: ids well inside every vocabulary transformers reads from GGUF.
PROBE_IDS = [[1, 100, 2000, 345, 17, 9000, 42, 7, 1234, 31]]


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _require_gguf_package() -> None:
    try:
        import gguf  # noqa: F401  (only its presence is checked here; transformers imports it)
    except ImportError:
        raise UserError(
            "reading a .gguf file needs the `gguf` package: pip install gguf==0.19.0 "
            "(make venv installs it)"
        ) from None


def supported_architectures() -> list[str]:
    """The GGUF ``general.architecture`` values transformers can turn into a model."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return sorted(set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"})


def gguf_architecture(path: Path) -> str:
    """The file's ``general.architecture`` metadata value (read without loading any tensor)."""
    _require_gguf_package()
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # the reader raises ValueError, struct.error, ... on a file that is not GGUF
        raise UserError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None
    field = reader.fields.get("general.architecture")
    if field is None:
        raise UserError(f"{path}: GGUF metadata names no general.architecture")
    return bytes(field.parts[field.data[0]]).decode("utf-8")


@dataclass(frozen=True)
class ConversionRecord:
    """What ``sftlab_source.json`` says about a converted dir."""

    source: str
    sha256: str
    architecture: str
    parameters: int
    max_abs_logit_diff: float
    seconds: float
    transformers_version: str


def converted_dir(path: Path, sha256: str) -> Path:
    """The cache dir for a file with this hash."""
    return cache_root() / "converted" / f"{path.stem}-{sha256[:16]}"


def _is_complete(out: Path) -> bool:
    return (out / SOURCE_FILE).is_file() and (out / "config.json").is_file()


def convert_gguf(gguf_path: str | Path, log: bool = True) -> Path:
    """Convert ``gguf_path`` to a cached HF model dir (once) and return the dir.

    The conversion is written into a temporary dir beside the cache entry and renamed into place only
    when complete and checked, so a killed conversion leaves nothing that a later call would trust.
    """
    path = Path(gguf_path).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"GGUF file not found: {gguf_path}")
    if path.suffix != ".gguf":
        raise UserError(f"{gguf_path}: expected a .gguf file")
    sha = file_sha256(path)
    out = converted_dir(path, sha)
    if _is_complete(out):
        return out
    architecture = gguf_architecture(path)
    if architecture not in supported_architectures():
        raise UserError(
            f"{path.name}: GGUF architecture {architecture!r} is not one transformers can load; "
            f"supported: {', '.join(supported_architectures())}"
        )
    if log:
        print(f"sftlab: converting {path.name} to a safetensors model dir (once; cached in {out.parent})")
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        record = _convert_into(path, sha, architecture, staging, started)
        (staging / SOURCE_FILE).write_text(json.dumps(asdict(record), indent=2) + "\n")
        # mkdtemp makes the dir private; the cache is as readable as any model dir.
        staging.chmod(0o755)
        for child in staging.iterdir():
            child.chmod(0o644)
        try:
            staging.rename(out)
        except OSError:
            # Another process finished the same conversion first: its dir is as good as ours.
            if not _is_complete(out):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _convert_into(path: Path, sha: str, architecture: str, staging: Path, started: float) -> ConversionRecord:
    """Dequantize, rebuild without the quantization config, save, reload and compare logits."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        raise UserError(f"{path}: transformers could not load it ({type(exc).__name__}: {exc})") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = path.stem
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # strict: every tensor of the architecture must come from the file (tied weights are one tensor).
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(str(staging), safe_serialization=True)
    tokenizer.save_pretrained(str(staging))
    del plain

    reloaded = AutoModelForCausalLM.from_pretrained(str(staging), dtype=torch.float32, use_safetensors=True)
    probe = torch.tensor(PROBE_IDS) % config.vocab_size
    with torch.no_grad():
        diff = (reloaded.eval()(probe).logits - loaded.eval()(probe).logits).abs().max().item()
    if not diff <= LOGIT_TOLERANCE:
        raise UserError(
            f"{path.name}: the converted model's logits differ from the GGUF load by {diff:.3g} "
            f"(tolerance {LOGIT_TOLERANCE}); the conversion was not kept"
        )
    return ConversionRecord(
        source=str(path),
        sha256=sha,
        architecture=architecture,
        parameters=sum(p.numel() for p in reloaded.parameters()),
        max_abs_logit_diff=diff,
        seconds=round(time.perf_counter() - started, 1),
        transformers_version=transformers.__version__,
    )
