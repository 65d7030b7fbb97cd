"""An audit refuses bad inputs before any model runs: model dirs, data files, and room for each prompt."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from sftlab.config import AuditConfig, build_config
from sftlab.errors import UserError
from sftlab.recipes import audit


class ModelsRan(Exception):
    """Raised in place of the first model run: every check before it has passed."""


@pytest.fixture()
def no_model_runs(monkeypatch):
    """Stand in for the model runs (base sampling first): reaching them means validation let the audit through."""
    def refuse(*args, **kwargs):
        raise ModelsRan

    monkeypatch.setattr(audit, "run_models", refuse)


@pytest.fixture()
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"instruction": "Name a colour."}) + "\n"
                    + json.dumps({"instruction": " ".join(["Tell me everything about the old king's castle"] * 6)})
                    + "\n")
    return path


def _with_positions(src: Path, out: Path, positions: int) -> Path:
    """A copy of ``src`` whose config declares ``positions`` (its weights are never loaded here)."""
    shutil.copytree(src, out)
    config = json.loads((out / "config.json").read_text())
    config["n_positions"] = positions
    (out / "config.json").write_text(json.dumps(config))
    return out


def _cfg(base: Path, tuned: list[Path], prompts: Path, out: Path, **kw) -> AuditConfig:
    return build_config(AuditConfig, {"base": str(base), "tuned": [f"tuned{i}={t}" for i, t in enumerate(tuned)],
                                      "prompts": str(prompts),
                                      "out": str(out), "embedding_model": "none",
                                      "sampling": {"num_samples": 1, "max_new_tokens": 16}, **kw})


def test_a_valid_audit_reaches_the_model_runs(tiny_model_dir, prompts, tmp_path, no_model_runs) -> None:
    with pytest.raises(ModelsRan):
        audit.run_audit(_cfg(tiny_model_dir, [tiny_model_dir], prompts, tmp_path / "out"))


@pytest.mark.parametrize("content", ["empty", "tokenizer only"])
def test_a_tuned_dir_that_is_neither_model_nor_adapter_fails_first(tiny_model_dir, prompts, tmp_path, no_model_runs,
                                                                   content) -> None:
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    if content == "tokenizer only":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tiny_model_dir / name, tuned / name)
    with pytest.raises(UserError, match=r"tuned is neither a model dir \(no config\.json\) nor a PEFT adapter dir"):
        audit.run_audit(_cfg(tiny_model_dir, [tuned], prompts, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key", ["benchmark", "reference", "prompts", "eval_set"])
def test_a_missing_data_file_fails_first(tiny_model_dir, prompts, tmp_path, no_model_runs, key) -> None:
    missing = str(tmp_path / "absent.jsonl")
    cfg = _cfg(tiny_model_dir, [tiny_model_dir], prompts, tmp_path / "out")
    cfg = cfg.model_copy(update={key: [missing] if key in ("benchmark", "reference") else missing})
    with pytest.raises(UserError, match=r"absent\.jsonl"):
        audit.run_audit(cfg)


def test_no_room_for_a_prompt_fails_first(tiny_model_dir, prompts, tmp_path, no_model_runs) -> None:
    short = _with_positions(tiny_model_dir, tmp_path / "short", 16)
    # The base itself has 16 positions, and 16 new tokens leave none for the prompt.
    with pytest.raises(UserError, match=r"has 16 positions .*max_new_tokens 16 leaves no room for a prompt; .* below 16"):
        audit.run_audit(_cfg(short, [tiny_model_dir], prompts, tmp_path / "out"))


def test_a_cut_that_a_models_positions_force_is_said_before_the_model_runs(tiny_model_dir, prompts, tmp_path,
                                                                          no_model_runs, capsys) -> None:
    short = _with_positions(tiny_model_dir, tmp_path / "short", 96)
    # With its template, prompt 1 is about 60 tokens and fits in 96 positions with 16 new tokens; prompt 2
    # (about 120) does not, in the tuned model: generation will cut it from the left, and says so first.
    with pytest.raises(ModelsRan):
        audit.run_audit(_cfg(tiny_model_dir, [short], prompts, tmp_path / "out"))
    said = " ".join(capsys.readouterr().err.split())
    assert re.search(r"model tuned0 has 96 positions: 1 of 2 prompts are cut from the left .*"
                     r"prompts\.jsonl prompt 2, from \d+ to 80 tokens\)\. Set max_length: 96", said), said
    # Asking for the cut, as the note says, makes it the user's choice: no note.
    with pytest.raises(ModelsRan):
        audit.run_audit(_cfg(tiny_model_dir, [short], prompts, tmp_path / "out", max_length=96))
    assert "cut from the left" not in capsys.readouterr().err
