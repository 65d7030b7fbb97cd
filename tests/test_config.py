"""Config: strict keys with suggestions, overrides, schema."""

from __future__ import annotations

import json

import pytest

from sftlab.cli import main
from sftlab.config import TrainConfig, load_config, parse_overrides
from sftlab.errors import UserError


def _write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_overrides_nest_and_parse_yaml_scalars():
    assert parse_overrides(["lora.r=16", "packing=true", "learning_rate=3e-4", "x="]) == {
        "lora": {"r": 16}, "packing": True, "learning_rate": 3e-4, "x": None}


def test_unknown_key_suggests_closest(tmp_path):
    path = _write(tmp_path, "model_name_or_path: m\ntrain_file: a.jsonl\nlearning_rat: 0.1\n")
    with pytest.raises(UserError, match="did you mean 'learning_rate'"):
        load_config(TrainConfig, path)


def test_unknown_nested_key_suggests_closest(tmp_path):
    path = _write(tmp_path, "model_name_or_path: m\ntrain_file: a.jsonl\nlora: {rank: 4}\n")
    with pytest.raises(UserError, match="unknown key 'lora.rank'"):
        load_config(TrainConfig, path)


def test_override_beats_file_and_lambda_alias(tmp_path):
    path = _write(tmp_path, "model_name_or_path: m\ntrain_file: a.jsonl\nlora: {r: 4}\n")
    cfg = load_config(TrainConfig, path, ["lora.r=32", "l2sp.lambda=0.5"])
    assert cfg.lora.r == 32 and cfg.train_file == ["a.jsonl"] and cfg.l2sp.lambda_ == 0.5


def test_inconsistent_config_is_user_error(tmp_path):
    path = _write(tmp_path, "model_name_or_path: m\ntrain_file: a.jsonl\neval_strategy: steps\n")
    with pytest.raises(UserError, match="needs eval data"):
        load_config(TrainConfig, path)


def test_cli_bad_config_exits_2_without_traceback(tmp_path, capsys):
    path = _write(tmp_path, "model_name_or_path: m\ntrain_file: a.jsonl\nepochs: 3\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'epochs'" in err and "Traceback" not in err


def test_cli_missing_config_exits_2(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_schema_prints_json(capsys):
    assert main(["config", "schema", "train"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "learning_rate" in schema["properties"] and "neftune_noise_alpha" in schema["properties"]
