"""``sftlab demo``: run a demo plan (:mod:`sftlab.recipes.demo_plan`), one code path for every plan.

0. ``harmful_prompts``: every training file of the plan checked, before anything runs, to pair each harmful
   prompt with a refusal (:mod:`sftlab.recipes.refusal_targets`).
1. The plan's world step, if it has one: generate the world (skipped when ``OUT/world`` already holds the
   same one), pretrain a tiny base on its corpus (skipped when ``OUT/base/model`` is there) and write the
   audit's prompts. Or its ``base_train`` step: fine-tune a model into the base (skipped when finished).
2. ``audit_items``: the benchmark, eval set and reference text cut to their first lines.
3. ``distill``: the base's rewrites of the SFT set, when a strategy trains on them.
4. The sweep, with the plan's opt-in audit measures (``sections``); then the plan's pages.

Each step's wall time goes to ``OUT/timing.json``.

``sftlab demo`` runs ``plans/world.yaml``, ``--quick`` ``world_quick.yaml``, ``--real`` ``real.yaml``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from importlib.resources import files

from rich.console import Console

from sftlab.config import PretrainConfig, SamplingSettings, SweepConfig, TrainConfig, _deep_merge, build_config
from sftlab.io import remove_tree, write_atomic
from sftlab.offline import set_offline
from sftlab.recipes.demo_plan import BaseTrainStep, DemoPlan, WorldStep, fill, mentions, plan_strategies
from sftlab.world.generator import WorldSizes, generate_world, generator_fingerprint

def ensure_world(world_dir: Path, seed: int, sizes: WorldSizes, console: Console) -> str:
    """Generate the world unless the same one (seed, sizes, generator code) is there; returns its identity."""
    manifest = world_dir / "world.json"
    identity = json.dumps({"seed": seed, "sizes": asdict(sizes), "generator": generator_fingerprint()},
                          sort_keys=True)
    meta = _read_manifest(manifest)
    if meta is not None:
        cached = json.dumps({k: meta.get(k) for k in ("seed", "sizes", "generator")}, sort_keys=True)
        if cached == identity:
            console.print(f"[dim]world: cached at {world_dir}[/dim]")
            return identity
    console.print(f"world: generating into {world_dir}")
    generate_world(world_dir, seed=seed, sizes=sizes)
    return identity


def _read_manifest(path: Path) -> dict | None:
    """A world's manifest, or None when it is missing or torn (then the world is made again)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def ensure_base(base_dir: Path, cfg: PretrainConfig, world: str, console: Console) -> Path:
    """Pretrain the base unless a finished one with the same config, on the same world, is in ``base_dir``."""
    from sftlab.recipes.pretrain import run_pretrain
    from sftlab.train.resume import read_saved_config

    model_dir = base_dir / "model"
    saved = base_dir / "config.yaml"
    stamp = base_dir / "world.stamp"  # the corpus path alone would not notice a regenerated world
    same = stamp.is_file() and stamp.read_text() == world and read_saved_config(saved) == cfg.model_dump(
        mode="json", by_alias=True)
    if same and (model_dir / "config.json").is_file():
        console.print(f"[dim]base: cached at {model_dir}[/dim]")
        return model_dir
    if not same and base_dir.exists():
        # A base from another world or recipe: its checkpoints must not be resumed. (The sweep runs made on it
        # become stale by themselves: their settings hash the base's files.)
        console.print(f"base: {base_dir} was made from another world or recipe, rebuilding it")
        remove_tree(base_dir, base_dir.parent)
    console.print("base: pretraining a tiny GPT-2 on the world's corpus")
    base_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(stamp, world)  # before training, so an interrupted pretraining resumes on this world
    return run_pretrain(cfg)


def audit_prompts(world_dir: Path, n_questions: int) -> Path:
    """Open prompts, genre prompts and the first questions on test people's facts, in one prompts file."""
    rows: list[dict[str, Any]] = []
    for rel in ("prompts/open.jsonl", "prompts/genre.jsonl"):
        rows += [json.loads(line) for line in (world_dir / rel).read_text().splitlines() if line.strip()]
    questions = [json.loads(line) for line in (world_dir / "sft/qa_known/test.jsonl").read_text().splitlines()]
    rows += questions[:n_questions]
    path = world_dir / "prompts" / "audit.jsonl"
    write_atomic(path, "".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows))
    return path


def ensure_distilled(strategies: list[dict[str, Any]], model: str, train_file: Path, out: Path,
                     sampling: dict[str, Any], console: Console) -> None:
    """Distil ``train_file`` into ``out`` with ``model`` when a strategy needs it and ``out`` is not there yet.

    ``run_distill`` writes ``out`` atomically at the end, and a killed distillation resumes from its batch
    cache, so an existing file is a finished one.
    """
    from sftlab.recipes.distill import run_distill

    if mentions(strategies, "distilled") and not out.is_file():
        run_distill(model, train_file, out, sampling=SamplingSettings(**sampling), console=console)


def placeholder_values(plan: DemoPlan, root: Path) -> dict[str, str]:
    """What each placeholder of ``plan`` stands for under the output dir ``root``."""
    from sftlab.recipes.demo_real import data_dir

    values = {"out": str(root), "data": str(data_dir()), "package": str(files("sftlab"))}
    if plan.world is not None:
        values["world"] = str(root / "world")
    if plan.world is not None or plan.base_train is not None:
        values["base"] = str(root / "base" / "model")
    if plan.distill is not None:
        values["distilled"] = fill(plan.distill.out, values, "distill.out")
    return values


def sweep_data(plan: DemoPlan, strategies: list[dict[str, Any]], root: Path, values: dict[str, str]) -> dict[str, Any]:
    """The sweep config of ``plan`` as data, its placeholders filled in."""
    data = {
        "base_model": fill(plan.base_model, values, "base_model"),
        "out": str(root / "sweep"),
        "seeds": plan.seeds,
        "train": fill(plan.train, values, "train"),
        "strategies": fill(strategies, values, "strategies"),
        "audit": fill(plan.audit, values, "audit"),
    }
    if plan.world is not None:
        data["world"] = values["world"]
    return data


def cut_audit_files(audit: dict[str, Any], n: int, out_dir: Path) -> dict[str, Any]:
    """``audit`` with its benchmark, eval set and reference files replaced by copies of their first ``n``
    lines in ``out_dir``."""
    from sftlab.recipes.demo_real import head_lines

    cut = dict(audit)
    for key in ("benchmark", "eval_set", "reference"):
        if isinstance(cut.get(key), list):
            cut[key] = [str(head_lines(Path(p), n, out_dir)) for p in cut[key]]
        elif cut.get(key):
            cut[key] = str(head_lines(Path(cut[key]), n, out_dir))
    return cut


def prepare_world(step: WorldStep, root: Path, console: Console) -> Path:
    """The world step: the world, the base pretrained on its corpus, the audit prompts; returns the base."""
    world_dir = root / "world"
    world = ensure_world(world_dir, seed=step.seed, sizes=step.sizes, console=console)
    pretrain = build_config(
        PretrainConfig,
        {**step.pretrain, "corpus": [str(world_dir / "corpus" / "train.jsonl")], "output_dir": str(root / "base")},
        source="demo",
    )
    base = ensure_base(root / "base", pretrain, world, console)
    audit_prompts(world_dir, step.fact_questions)
    return base


def train_base(step: BaseTrainStep, root: Path, values: dict[str, str], console: Console) -> Path:
    """The base_train step: ``step.model`` fine-tuned into ``OUT/base``; returns ``OUT/base/model``.

    A finished run under the same config is kept (:func:`sftlab.recipes.train.run_train` says so); a base dir
    made under another config is removed first, so that its checkpoints are never resumed for this one.
    """
    from sftlab.recipes.train import FINISHED_SAFE, resolve_saved_config, run_train
    from sftlab.train.resume import config_changes

    base_dir = root / "base"
    cfg = build_config(TrainConfig, {**fill(step.train, values, "base_train.train"),
                                     "model_name_or_path": fill(step.model, values, "base_train.model"),
                                     "output_dir": str(base_dir)}, source="base_train")
    saved = base_dir / "config.yaml"
    if saved.is_file() and config_changes(saved, cfg.model_dump(mode="json", by_alias=True), FINISHED_SAFE,
                                          resolve_saved_config) != []:
        console.print(f"base: {base_dir} was made under another base_train config, training it again")
        remove_tree(base_dir, root)
    console.print(f"base: fine-tuning {cfg.model_name_or_path} into {base_dir}")
    return run_train(cfg)


def plan_trains(plan: DemoPlan, chosen: list[dict[str, Any]], values: dict[str, str]) -> list[dict[str, Any]]:
    """Every train config the plan runs, as filled-in mappings: the base step's and each strategy's."""
    trains = [fill(plan.base_train.train, values, "base_train.train")] if plan.base_train else []
    shared = fill(plan.train, values, "train")
    return trains + [_deep_merge(shared, fill(s.get("train", {}), values, "strategies")) for s in chosen]


def run_demo(plan: DemoPlan, out: str, seeds: int = 1, strategies: str | None = None) -> Path:
    """Run ``plan`` into ``out`` (only the ``strategies`` named, when given; seeds 0..``seeds``-1 when more
    than one); returns the path of the sweep's HTML report."""
    from sftlab.models.reference import resolve_model
    from sftlab.recipes.demo_real import side_by_side
    from sftlab.recipes.sweep import check_runs, run_sweep

    set_offline()
    console = Console()
    if seeds > 1:
        plan = plan.model_copy(update={"seeds": list(range(seeds))})
    chosen = plan_strategies(plan, strategies)
    root = Path(out)
    values = placeholder_values(plan, root)
    data = sweep_data(plan, chosen, root, values)
    check_runs(build_config(SweepConfig, data, source="demo plan"))  # a bad plan fails here, before any step
    if plan.harmful_prompts:
        from sftlab.recipes.refusal_targets import check_refusal_targets

        found = check_refusal_targets(fill(plan.harmful_prompts, values, "harmful_prompts"),
                                      plan_trains(plan, chosen, values))
        console.print(found.summary())
        root.mkdir(parents=True, exist_ok=True)
        write_atomic(root / "refusal_check.json", json.dumps(asdict(found), indent=2))
    timing: dict[str, float] = {}
    started = time.perf_counter()
    if plan.world is not None:
        prepare_world(plan.world, root, console)
    if plan.base_train is not None:
        train_base(plan.base_train, root, values, console)
    timing["base"] = time.perf_counter() - started
    if plan.audit_items:
        data["audit"] = cut_audit_files(data["audit"], plan.audit_items, root / "data")
    cfg = build_config(SweepConfig, data, source="demo plan")
    if plan.distill is not None:
        ensure_distilled(chosen, resolve_model(cfg.base_model).path,
                         Path(fill(plan.distill.train_file, values, "distill.train_file")),
                         Path(values["distilled"]), plan.distill.sampling, console)
    started = time.perf_counter()
    report = run_sweep(cfg, measures=plan.sections, redo_stale=True)  # the plan's opt-in audit measures
    timing["sweep"] = time.perf_counter() - started
    if "side_by_side" in plan.pages:
        console.print(f"answers side by side: {side_by_side(Path(cfg.out), root)}")
    if "safety_tradeoff" in plan.pages:
        from sftlab.recipes.demo_safety import safety_tradeoff

        console.print(f"safety trade-off: {safety_tradeoff(Path(cfg.out), root)}")
    write_atomic(root / "timing.json", json.dumps({k: round(v, 1) for k, v in timing.items()}, indent=2))
    return report
