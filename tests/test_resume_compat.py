"""A run dir written before a config key existed is still the same run: its saved config is read as this
version resolves it (new keys at their defaults), so it is neither redone nor refused on resume."""

from __future__ import annotations

import yaml

from sftlab.config import TrainConfig, dump_config
from sftlab.recipes.train import RESUME_SAFE, finished_output, resolve_saved_config
from sftlab.train.resume import check_resume_config


def _old_run(tmp_path, drop_keys: dict[str, object]):
    """A finished run dir whose config.yaml lacks keys added later (and replay's new sub-keys)."""
    run = tmp_path / "run"
    cfg = TrainConfig(model_name_or_path="m", train_file="t.jsonl", output_dir=str(run),
                      replay={"corpus": "c.txt", "ratio": 0.3})
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    (run / "summary.json").write_text("{}")
    dump_config(cfg, run / "config.yaml")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    for key in drop_keys:
        saved.pop(key)
    saved["replay"] = {"corpus": "c.txt", "ratio": 0.3}  # as written before replay.source existed
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    return run, cfg


def test_a_finished_run_from_before_new_keys_is_still_finished(tmp_path) -> None:
    run, cfg = _old_run(tmp_path, {"metric_for_best_model": None, "preset": None})
    assert finished_output(cfg) == run / "model"
    check_resume_config(run, cfg.model_dump(mode="json", by_alias=True), "ckpt", RESUME_SAFE, resolve_saved_config)


def test_a_real_change_is_still_a_change(tmp_path) -> None:
    run, cfg = _old_run(tmp_path, {"metric_for_best_model": None})
    changed = cfg.model_copy(update={"learning_rate": 1.0})
    assert finished_output(changed) is None
