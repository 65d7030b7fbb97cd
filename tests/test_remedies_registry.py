"""The remedies registry: keys composed into TrainConfig, builders called in stage order, saved configs reload."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sftlab.config import TrainConfig, dump_config
from sftlab.train.remedies.base import STAGES, Remedy
from sftlab.train.remedies.registry import REMEDIES, active_remedies, describe_remedies, remedy_fields


def _cfg(**extra) -> TrainConfig:
    return TrainConfig(model_name_or_path="m", train_file="t.jsonl", **extra)


def test_active_remedies_come_in_stage_order() -> None:
    cfg = _cfg(neftune_noise_alpha=5.0, kl_to_base={"beta": 0.2}, loss="gem", l2sp={"lambda": 0.1},
               replay={"corpus": "c.txt"}, bf16_weight_rounding="nearest")
    assert [r.key for r in active_remedies(cfg)] == ["replay", "gem", "l2sp", "kl_to_base", "neftune"]
    assert [r.key for r in active_remedies(cfg, "after_trainer")] == ["l2sp", "kl_to_base", "neftune"]
    assert describe_remedies(cfg)[0] == "replay 20% of tokens from c.txt"


def test_every_remedy_is_whole_and_owns_its_keys() -> None:
    keys = [r.key for r in REMEDIES]
    assert len(keys) == len(set(keys))
    for remedy in REMEDIES:
        assert remedy.stage in STAGES and remedy.summary and "\n" not in remedy.summary
        assert remedy.loss is None or remedy.stage == "before_trainer"
        assert remedy.loss is not None or remedy.active is not None
    losses = [r.loss for r in REMEDIES if r.loss]
    assert set(TrainConfig.model_fields["loss"].annotation.__args__) == set(losses)
    assert all(name in TrainConfig.model_fields for r in REMEDIES for name in r.fields)
    clash = Remedy(key="mine", stage="data", summary="s", describe=lambda cfg: None, active=lambda cfg: False,
                   fields={"gem": (int, 0)})
    with pytest.raises(AssertionError, match="another remedy's"):
        remedy_fields((*REMEDIES, clash))


def test_a_saved_config_reloads_equal(tmp_path: Path) -> None:
    cfg = _cfg(preset="asft", neftune_noise_alpha=5.0, neftune_layers=[0, 1], eaft={"alpha": 2.0},
               ewc={"lambda": 3.0, "fisher_corpus": "f.txt"}, adversarial={"step_size": 0.1, "epsilon": 1.0},
               kl_to_base={"beta": 0.3, "on": "response"}, augment={"eda": {"p": 0.2}})
    dump_config(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["ewc"]["lambda"] == 3.0  # by alias, as users write it
    assert TrainConfig.model_validate(saved) == cfg
