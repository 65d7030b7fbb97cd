"""The demos' plans: YAML files, ``--strategies`` picks a subset, every strategy of both plans is a valid run,
placeholders are filled in on the parsed structure, and ``--plan`` refuses a bad file with exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sftlab.cli import main
from sftlab.config import SweepConfig, build_config
from sftlab.errors import UserError
from sftlab.recipes.demo import placeholder_values, sweep_data
from sftlab.recipes.demo_plan import (
    BUILTIN_PLANS,
    builtin_plan,
    fill,
    load_plan,
    plan_path,
    plan_strategies,
    select_strategies,
)
from sftlab.recipes.sweep import RunSpec, check_runs, train_config

WORLD = builtin_plan(real=False, quick=False)
REAL = builtin_plan(real=True, quick=False)


def _config(plan, out: Path, strategies: str | None = None) -> SweepConfig:
    chosen = plan_strategies(plan, strategies)
    return build_config(SweepConfig, sweep_data(plan, chosen, out, placeholder_values(plan, out)))


def test_every_builtin_plan_is_a_file_in_the_package_and_loads() -> None:
    for name in BUILTIN_PLANS:
        assert plan_path(name).is_file() and load_plan(plan_path(name)).strategies
    # The package data ships them (an installed wheel has no other copy).
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"recipes/plans/*.yaml"' in pyproject


def test_strategies_named_are_kept_in_the_plans_order() -> None:
    chosen = select_strategies(WORLD.strategies, "wise0.5, full ,gem")
    assert [s["name"] for s in chosen] == ["full", "gem", "wise0.5"]
    # The default keeps to the budget; the newer remedies are there for --strategies.
    defaults = [s["name"] for s in plan_strategies(WORLD, None)]
    assert defaults == ["full", "lora", "full+neftune5", "full+replay0.2", "full+ewc", "full+kl", "gem", "wise0.5"]
    assert [s["name"] for s in plan_strategies(WORLD, "dft,asft")] == ["dft", "asft"]
    assert len(plan_strategies(WORLD, "all")) == len(WORLD.strategies) == 16
    assert [s["name"] for s in plan_strategies(builtin_plan(real=False, quick=True), None)] == ["full", "wise0.5"]


def test_an_unknown_strategy_is_refused_with_the_known_ones() -> None:
    with pytest.raises(UserError, match=r"no strategy nope in this demo; it has full, lora"):
        select_strategies(WORLD.strategies, "full,nope")


def test_an_interpolation_needs_its_source() -> None:
    with pytest.raises(UserError, match="wise0.5 interpolates full; name full too"):
        select_strategies(WORLD.strategies, "wise0.5")


def test_every_real_demo_strategy_builds_its_train_config(tmp_path: Path) -> None:
    assert [s["name"] for s in plan_strategies(REAL, None)] == ["full", "lora", "full+kl", "full+replay", "wise0.5"]
    cfg = _config(REAL, tmp_path, "all")
    trained = {s.name: train_config(cfg, RunSpec(s, 0, tmp_path / s.name)) for s in cfg.strategies
               if s.post_hoc is None}
    assert trained["dft"].loss == "dft" and trained["dft"].kl_to_base is None
    # ASFT is DFT plus a KL anchor, nothing else.
    assert trained["asft"].loss == "dft" and trained["asft"].kl_to_base is not None
    assert trained["full+self-replay"].replay is not None and trained["full+self-replay"].replay.source == "self"
    assert trained["sdft"].train_file == [str(tmp_path / "data" / "shakespeare_distilled.jsonl")]
    # YAML 1.1 reads a bare `on` key as true: the plan quotes it, and the KL anchor keeps its setting.
    assert trained["full+kl"].kl_to_base.on == "response"


# The plans of the collapse experiment; the safety plan (alignment drift) has remedies of its own.
@pytest.mark.parametrize("plan_name", sorted(set(BUILTIN_PLANS) - {"safety"}))
def test_the_2026_remedies_are_in_every_plan_for_strategies_only(tmp_path: Path, plan_name: str) -> None:
    plan = load_plan(plan_path(plan_name))
    # Not in the defaults: those keep the plans' time budgets.
    assert not {"eaft", "tofu", "lora+intruders", "onpolicy-sdft"} & {s["name"] for s in plan_strategies(plan, None)}
    cfg = _config(plan, tmp_path, "eaft,tofu")
    assert [s.name for s in cfg.strategies] == ["eaft", "tofu"]
    losses = {s.name: train_config(cfg, RunSpec(s, 0, tmp_path / s.name)).loss for s in cfg.strategies}
    assert losses == {"eaft": "eaft", "tofu": "tofu"}
    cfg = _config(plan, tmp_path, "lora,lora+intruders")
    step = next(s for s in cfg.strategies if s.name == "lora+intruders").intruders
    assert step is not None and step.source == "lora" and step.mitigation_lambda == 0.75
    check_runs(cfg)  # the source is a LoRA strategy, so the sweep accepts the step


@pytest.mark.parametrize("plan_name", sorted(set(BUILTIN_PLANS) - {"safety"}))  # the collapse plans
def test_on_policy_self_distillation_is_in_every_plan_for_strategies_only(tmp_path: Path, plan_name: str) -> None:
    plan = load_plan(plan_path(plan_name))
    assert "onpolicy-sdft" not in {s["name"] for s in plan_strategies(plan, None)}
    cfg = _config(plan, tmp_path, "full,sdft,onpolicy-sdft")
    assert [s.name for s in cfg.strategies] == ["full", "sdft", "onpolicy-sdft"]
    trained = {s.name: train_config(cfg, RunSpec(s, 0, tmp_path / s.name)) for s in cfg.strategies}
    distill = trained["onpolicy-sdft"].on_policy_distill
    # The paper's objective: the base as teacher, the reverse KL over the whole vocabulary, fresh samples.
    assert distill is not None and (distill.teacher, distill.direction, distill.mode) == ("base", "reverse",
                                                                                         "full_logits")
    assert distill.resample_every == 1 and distill.max_new_tokens <= 96
    # It trains on the plan's SFT prompts, not on the offline rewrites; the other two carry no such section.
    assert trained["onpolicy-sdft"].train_file == trained["full"].train_file != trained["sdft"].train_file
    assert trained["full"].on_policy_distill is None and trained["sdft"].on_policy_distill is None


def test_intruder_reduction_needs_its_source() -> None:
    with pytest.raises(UserError, match="lora[+]intruders reduces the intruders of lora; name lora too"):
        select_strategies(WORLD.strategies, "full,lora+intruders")


def test_world_sdft_trains_on_the_bases_own_rewrites(tmp_path: Path) -> None:
    cfg = _config(WORLD, tmp_path, "all")
    sdft = next(s for s in cfg.strategies if s.name == "sdft")
    # The rewrites live with the base that made them, so a rebuilt base drops them.
    assert train_config(cfg, RunSpec(sdft, 0, tmp_path / "sdft")).train_file == [
        str(tmp_path / "base" / "narrow_distilled.jsonl")]
    assert cfg.base_model == str(tmp_path / "base" / "model") and cfg.world == str(tmp_path / "world")


def test_an_out_dir_with_quotes_and_braces_is_filled_in_as_it_is(tmp_path: Path) -> None:
    # Replacing placeholders in JSON text broke on a quote; each string is filled in once, on the structure.
    out = tmp_path / 'my "demo" {world} \\ dir'
    cfg = _config(WORLD, out, "full,full+replay0.2,sdft")
    replay = next(s for s in cfg.strategies if s.name == "full+replay0.2").train["replay"]
    assert replay["corpus"] == f"{out}/world/corpus/train.jsonl"
    sdft = next(s for s in cfg.strategies if s.name == "sdft")
    assert sdft.train["train_file"] == f"{out}/base/narrow_distilled.jsonl"
    assert fill({"a": ["{out}/x", 3]}, {"out": 'q"'}) == {"a": ['q"/x', 3]}


def test_a_placeholder_the_plan_does_not_have_is_refused(tmp_path: Path) -> None:
    # The real plan has no world step, so no {world}.
    with pytest.raises(UserError, match=r"strategies\[0\].train.train_file: unknown placeholder \{world\}"):
        fill([{"train": {"train_file": "{world}/x"}}], placeholder_values(REAL, tmp_path), "strategies")


def _plan_file(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(plan_path("real_quick").read_text())
    data.update(changes)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(("changes", "message"), [
    ({"strategis": []}, "strategis"),
    ({"sections": ["nope"]}, "sections"),
    ({"default_strategies": ["full", "nope"]}, "no strategy nope"),
    ({"sections": ["world"]}, "no world step"),
    ({"strategies": [{"name": "a"}, {"name": "a"}]}, "a name of its own"),
])
def test_a_bad_plan_file_exits_2_with_one_paragraph(tmp_path: Path, capsys, changes, message) -> None:
    path = _plan_file(tmp_path, **changes)
    assert main(["demo", "--plan", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_plan_file_that_is_missing_or_combined_with_real_is_refused(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--plan", str(tmp_path / "absent.yaml")]) == 2
    assert "no plan file" in capsys.readouterr().err
    assert main(["demo", "--real", "--plan", str(_plan_file(tmp_path))]) == 2
    assert "drop --real" in capsys.readouterr().err


def test_a_plan_whose_sweep_is_invalid_fails_before_any_step(tmp_path: Path, capsys) -> None:
    path = _plan_file(tmp_path, train={"learning_rat": 0.1})
    assert main(["demo", "--plan", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "learning_rat" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_distillation_runs_once_and_only_for_a_plan_that_needs_it(demo: Path, tmp_path: Path) -> None:
    from rich.console import Console

    from sftlab.recipes.demo import ensure_distilled

    records = (demo / "world" / "sft" / "narrow" / "train.jsonl").read_text().splitlines()[:4]
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(records) + "\n")
    out = tmp_path / "distilled.jsonl"
    sampling = {"num_samples": 1, "max_new_tokens": 8, "batch_size": 4}
    base = str(demo / "base" / "model")
    ensure_distilled(plan_strategies(WORLD, None), base, train, out, sampling, Console(quiet=True))
    assert not out.exists()
    ensure_distilled(WORLD.strategies, base, train, out, sampling, Console(quiet=True))
    assert len(out.read_text().splitlines()) == 4
    written = out.stat().st_mtime_ns
    ensure_distilled(WORLD.strategies, base, train, out, sampling, Console(quiet=True))
    assert out.stat().st_mtime_ns == written
