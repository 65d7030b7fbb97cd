"""User errors exit with code 2 and a one-paragraph message, no traceback; --debug shows the traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from sftlab.cli import main
from sftlab.errors import UserError


@pytest.fixture
def data_file(tmp_path, shared_data) -> Path:
    path = tmp_path / "train.json"
    path.write_text(json.dumps(json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[:16]))
    return path


def _config(tmp_path: Path, **values) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _run(capsys, *argv: str) -> str:
    """Run the CLI, expect exit 2, return stderr (checked to hold no traceback)."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("sftlab: error: ")
    assert "Traceback" not in err
    return err


def _train(tmp_path, model: Path | str, data: Path | str, **extra) -> Path:
    return _config(tmp_path, model_name_or_path=str(model), train_file=str(data),
                   output_dir=str(tmp_path / "run"), max_length=96, **extra)


def test_unknown_key_suggests_the_closest(tmp_path, tiny_model_dir, data_file, capsys):
    err = _run(capsys, "train", str(_train(tmp_path, tiny_model_dir, data_file, learning_rat=1e-3)))
    assert "unknown key 'learning_rat'; did you mean 'learning_rate'?" in err


def test_missing_config_file(tmp_path, capsys):
    assert "config file not found" in _run(capsys, "train", str(tmp_path / "nope.yaml"))


def test_missing_train_file(tmp_path, tiny_model_dir, capsys):
    err = _run(capsys, "train", str(_train(tmp_path, tiny_model_dir, tmp_path / "missing.jsonl")))
    assert "missing.jsonl" in err


def test_dir_that_is_not_a_model(tmp_path, data_file, capsys):
    (tmp_path / "empty").mkdir()
    err = _run(capsys, "train", str(_train(tmp_path, tmp_path / "empty", data_file)))
    assert "is not a model dir" in err


def test_broken_model_config(tmp_path, tiny_model_dir, data_file, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "config.json").write_text("{not json")
    err = _run(capsys, "train", str(_train(tmp_path, broken, data_file)))
    assert str(broken) in err


def test_hub_id_offline_fails_fast_with_advice(tmp_path, data_file, capsys):
    err = _run(capsys, "--offline", "train", str(_train(tmp_path, "some-org/some-model", data_file)))
    assert "offline" in err and "local model dir" in err


def test_strict_data_names_file_line_and_field(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "completion": "hello"}\n{"prompt": "hi", "completion": 3}\n')
    err = _run(capsys, "train", str(_train(tmp_path, tiny_model_dir, bad, strict_data=True)))
    assert "bad.jsonl:2" in err and "completion" in err


def test_unknown_optimizer_lists_choices(tmp_path, tiny_model_dir, data_file, capsys):
    err = _run(capsys, "train", str(_train(tmp_path, tiny_model_dir, data_file, optim="adamw9000")))
    assert "unknown optimizer 'adamw9000'" in err and "radam" in err and "sgd" in err


def test_max_length_beyond_positions(tmp_path, tiny_model_dir, data_file, capsys):
    err = _run(capsys, "train", str(_train(tmp_path, tiny_model_dir, data_file)), "max_length=1024")
    assert "exceeds what the model can attend to (256 positions)" in err


def test_resume_from_a_dir_that_is_no_checkpoint(tmp_path, tiny_model_dir, data_file, capsys):
    err = _run(capsys, "train", str(_train(tmp_path, tiny_model_dir, data_file, resume=str(tmp_path))))
    assert "not a checkpoint dir" in err


def test_nan_loss_exits_2_with_a_message(tmp_path, tiny_model_dir, data_file, capsys, monkeypatch):
    """NaN injected through the loss (the recipe's build_loss patched to a poisoned cross-entropy)."""
    import sftlab.recipes.train as recipe
    from sftlab.train.losses import cross_entropy

    monkeypatch.setattr(recipe, "build_loss", lambda cfg: lambda *a, **k: cross_entropy(*a, **k) * float("nan"))
    err = _run(capsys, "train", str(_train(tmp_path, tiny_model_dir, data_file, max_steps=3)))
    assert "training loss became nan at step 1" in err and "No checkpoint was saved" in err


def test_merge_of_a_full_model_dir(tmp_path, tiny_model_dir, capsys):
    err = _run(capsys, "merge", "--adapter", str(tiny_model_dir), "--out", str(tmp_path / "m"))
    assert "not a PEFT adapter dir" in err


def test_pretrain_missing_corpus(tmp_path, capsys):
    err = _run(capsys, "pretrain", str(_config(tmp_path, corpus=str(tmp_path / "none.txt"))))
    assert "none.txt" in err


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(UserError, match="config file not found"):
        main(["--debug", "train", str(tmp_path / "nope.yaml")])


def test_colliding_audit_labels_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default out, runs/audit, is relative
    # Two sweeps' runs are both ".../seed0/model": one label for two models would merge them in every table.
    for sweep in ("a", "b"):
        (tmp_path / sweep / "seed0" / "model").mkdir(parents=True)
    base = tmp_path / "base"
    base.mkdir()
    args = ["audit", "--base", str(base), "--prompts", str(tmp_path / "prompts.jsonl")]
    err = _run(capsys, *args, "--tuned", str(tmp_path / "a/seed0/model"), "--tuned", str(tmp_path / "b/seed0/model"))
    assert "both labelled 'seed0/model'" in err and "--tuned NAME=" in err
    err = _run(capsys, *args, "--tuned", f"x={tmp_path / 'a/seed0/model'}", "--tuned", f"x={tmp_path / 'b/seed0/model'}")
    assert "both labelled 'x'" in err
    # A tuned model may not take the base's label either.
    assert "both labelled 'base'" in _run(capsys, *args, "--tuned", f"base={tmp_path / 'a/seed0/model'}")
    assert not (tmp_path / "runs").exists()  # a refused audit leaves no empty report dir behind
