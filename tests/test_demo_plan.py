"""The demos' plans: ``--strategies`` picks a subset, and every strategy of both full plans is a valid run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from sftlab.errors import UserError
from sftlab.recipes.demo import ALL_STRATEGIES as WORLD_ALL
from sftlab.recipes.demo import FULL_STRATEGIES, select_strategies
from sftlab.recipes.demo import NEWER_REMEDIES as WORLD_NEWER
from sftlab.recipes.demo_real import ALL_STRATEGIES, FULL, NEWER_REMEDIES, distilled_path, sweep_config
from sftlab.recipes.sweep import RunSpec, train_config


def test_strategies_named_are_kept_in_the_plans_order() -> None:
    chosen = select_strategies(FULL_STRATEGIES, "wise0.5, full ,gem")
    assert [s["name"] for s in chosen] == ["full", "gem", "wise0.5"]
    # The world demo's default keeps to its budget; the newer remedies are there for --strategies.
    assert not {s["name"] for s in WORLD_NEWER} & {s["name"] for s in FULL_STRATEGIES}
    assert [s["name"] for s in select_strategies(WORLD_ALL, "dft,asft")] == ["dft", "asft"]
    assert select_strategies(FULL_STRATEGIES, None) is FULL_STRATEGIES
    assert select_strategies(FULL_STRATEGIES, "all") is FULL_STRATEGIES


def test_an_unknown_strategy_is_refused_with_the_known_ones() -> None:
    with pytest.raises(UserError, match=r"no strategy nope in this demo; it has full, lora"):
        select_strategies(FULL_STRATEGIES, "full,nope")


def test_an_interpolation_needs_its_source() -> None:
    with pytest.raises(UserError, match="wise0.5 interpolates full; name full too"):
        select_strategies(FULL_STRATEGIES, "wise0.5")


def test_every_real_demo_strategy_builds_its_train_config(tmp_path: Path) -> None:
    # The default plan keeps to the budget; the newer remedies are there for --strategies.
    assert not {s["name"] for s in NEWER_REMEDIES} & {s["name"] for s in FULL.strategies}
    cfg = sweep_config(replace(FULL, strategies=ALL_STRATEGIES), tmp_path)
    trained = {s.name: train_config(cfg, RunSpec(s, 0, tmp_path / s.name)) for s in cfg.strategies
               if s.interpolate is None}
    assert trained["dft"].loss == "dft" and trained["dft"].kl_to_base is None
    # ASFT is DFT plus a KL anchor, nothing else.
    assert trained["asft"].loss == "dft" and trained["asft"].kl_to_base is not None
    assert trained["full+self-replay"].replay is not None and trained["full+self-replay"].replay.source == "self"
    assert trained["sdft"].train_file == [str(distilled_path(tmp_path))]


def test_world_sdft_trains_on_the_bases_own_rewrites(demo: Path, tmp_path: Path) -> None:
    from sftlab.recipes.demo import FULL as WORLD_FULL
    from sftlab.recipes.demo import distilled_path as world_distilled_path
    from sftlab.recipes.demo import sweep_config as world_sweep_config

    cfg = world_sweep_config(replace(WORLD_FULL, strategies=WORLD_ALL), tmp_path, demo / "world",
                             demo / "base" / "model")
    sdft = next(s for s in cfg.strategies if s.name == "sdft")
    # The rewrites live with the base that made them, so a rebuilt base drops them.
    assert train_config(cfg, RunSpec(sdft, 0, tmp_path / "sdft")).train_file == [
        str(world_distilled_path(tmp_path / "base"))]


def test_the_distillation_runs_once_and_only_for_a_plan_that_needs_it(demo: Path, tmp_path: Path) -> None:
    from rich.console import Console

    from sftlab.recipes.demo import ensure_distilled

    records = (demo / "world" / "sft" / "narrow" / "train.jsonl").read_text().splitlines()[:4]
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(records) + "\n")
    out = tmp_path / "distilled.jsonl"
    sampling = {"num_samples": 1, "max_new_tokens": 8, "batch_size": 4}
    base = str(demo / "base" / "model")
    ensure_distilled(FULL_STRATEGIES, base, train, out, sampling, Console(quiet=True))
    assert not out.exists()
    ensure_distilled(WORLD_ALL, base, train, out, sampling, Console(quiet=True))
    assert len(out.read_text().splitlines()) == 4
    written = out.stat().st_mtime_ns
    ensure_distilled(WORLD_ALL, base, train, out, sampling, Console(quiet=True))
    assert out.stat().st_mtime_ns == written
