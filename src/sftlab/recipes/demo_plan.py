"""A demo plan: a YAML file that says what ``sftlab demo`` prepares, sweeps and writes.

The built-in plans live in ``sftlab/recipes/plans/`` (``world.yaml``, ``world_quick.yaml``, ``real.yaml``,
``real_quick.yaml``); ``sftlab demo --plan FILE`` runs a user's own. A plan holds the sweep's parts
(``base_model``, ``train``, ``audit``, ``strategies``) and the steps around it, each declared by a key:

- ``world``: generate the synthetic world, pretrain a tiny base on it, write the audit's prompts;
- ``base_train``: fine-tune a model into the plan's own base (``{base}``) before the sweep, e.g. an aligned
  model that the strategies then fine-tune further;
- ``harmful_prompts``: prompt sets that may become a training target only answered by a refusal; every
  training file of the plan is checked before anything runs (:mod:`sftlab.recipes.refusal_targets`);
- ``distill``: the base's rewrites of the SFT set, made when a strategy names ``{distilled}``;
- ``audit_items``: the benchmark, eval set and reference text cut to their first N lines;
- ``sections``: opt-in audit measures by name (the world's judge, the play-style count);
- ``pages``: pages written after the sweep (the answers side by side; the safety trade-off table and plot).

Paths name placeholders (:data:`PLACEHOLDERS`), filled in on the parsed structure, string by string.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from sftlab.config import StrictModel, build_config, read_yaml
from sftlab.errors import UserError
from sftlab.world.generator import WorldSizes

PLACEHOLDERS = {
    "out": "the --out dir",
    "world": "OUT/world (a plan with a world step)",
    "base": "the plan's own base, OUT/base/model (a plan with a world or base_train step)",
    "data": "the real demo's shipped samples (sftlab/demo_data/real)",
    "distilled": "distill.out",
    "package": "the installed sftlab package (its shipped data: demo_data/, audit/suites/)",
}
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]+)\}")
BUILTIN_PLANS = ("world", "world_quick", "real", "real_quick", "safety")


class WorldStep(StrictModel):
    """Generate the world (``{world}``), pretrain a base on its corpus (``{base}``), write the audit prompts."""

    seed: int = 0
    sizes: WorldSizes = Field(default_factory=WorldSizes)
    pretrain: dict[str, Any] = Field(..., description="a pretrain config, less corpus and output_dir")
    fact_questions: int = Field(40, ge=0, description="questions on test people's facts among the audit prompts")


class DistillStep(StrictModel):
    """The base's greedy rewrites of ``train_file`` into ``out`` (``{distilled}``), for SDFT."""

    train_file: str
    out: str
    sampling: dict[str, Any] = Field(default_factory=dict)


class BaseTrainStep(StrictModel):
    """Fine-tune ``model`` into the plan's base (``{base}``, OUT/base/model) before the sweep: train config keys
    less model_name_or_path and output_dir. Skipped when a finished base with the same config is there."""

    model: str = Field(..., description="the model fine-tuned into the base (a dir or built-in name)")
    train: dict[str, Any] = Field(..., description="TrainConfig keys, less model_name_or_path and output_dir")


class DemoPlan(StrictModel):
    """What one demo runs; see the module docstring and the built-in plans."""

    description: str = ""
    world: WorldStep | None = None
    base_train: BaseTrainStep | None = None
    base_model: str
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    train: dict[str, Any]
    audit: dict[str, Any]
    distill: DistillStep | None = None
    audit_items: int | None = Field(None, ge=1, description="cut benchmark, eval set and reference to N lines")
    sections: list[Literal["world", "scene_style"]] = Field(default_factory=list)
    pages: list[Literal["side_by_side", "safety_tradeoff"]] = Field(default_factory=list)
    harmful_prompts: list[str] = Field(default_factory=list, description="prompt sets (JSON lines with `prompt`) "
                                       "whose prompts may be trained on only with a refusal as the answer")
    strategies: list[dict[str, Any]] = Field(..., min_length=1, description="every strategy the plan knows")
    default_strategies: list[str] | None = Field(None, description="names run without --strategies (default: all)")


def plan_path(name: str) -> Path:
    """The file of built-in plan ``name``."""
    return Path(str(files("sftlab") / "recipes" / "plans" / f"{name}.yaml"))


def load_plan(path: str | Path) -> DemoPlan:
    """Read and validate a plan file; a bad file is a UserError that names it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--plan: no plan file {path}")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: a demo plan is a mapping of keys (base_model, train, audit, strategies, ...)")
    plan = build_config(DemoPlan, data, source=str(path))
    names = [s.get("name") for s in plan.strategies]
    if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
        raise UserError(f"{path}: every strategy needs a name of its own, got {names}")
    if plan.default_strategies is not None:
        select_strategies(plan.strategies, ",".join(plan.default_strategies))
    if plan.world is None and "world" in plan.sections:
        raise UserError(f"{path}: the `world` section judges a world, and the plan has no world step")
    if plan.world is not None and plan.base_train is not None:
        raise UserError(f"{path}: the world step and base_train both make {{base}}; keep one")
    return plan


def builtin_plan(real: bool, quick: bool) -> DemoPlan:
    """One of the four built-in plans, as ``--real`` and ``--quick`` pick it."""
    return load_plan(plan_path(("real" if real else "world") + ("_quick" if quick else "")))


def select_strategies(strategies: list[dict[str, Any]], names: str | None) -> list[dict[str, Any]]:
    """The strategies named in ``names`` (comma-separated, as ``--strategies`` takes them), in the plan's
    order; all of them when ``names`` is empty or ``all``."""
    if not names or names.strip() == "all":
        return strategies
    wanted = {n.strip() for n in names.split(",") if n.strip()}
    known = [s["name"] for s in strategies]
    unknown = sorted(wanted - set(known))
    if unknown:
        raise UserError(f"--strategies: no strategy {', '.join(unknown)} in this demo; it has {', '.join(known)}")
    chosen = [s for s in strategies if s["name"] in wanted]
    for s in chosen:
        for step, verb in (("interpolate", "interpolates"), ("intruders", "reduces the intruders of"),
                           ("safelora", "projects the adapter of")):
            source = s.get(step, {}).get("source")
            if source and source not in wanted:
                raise UserError(f"--strategies: {s['name']} {verb} {source}; name {source} too")
    return chosen


def plan_strategies(plan: DemoPlan, names: str | None) -> list[dict[str, Any]]:
    """What runs: the strategies named by ``--strategies``, else the plan's defaults, else all of them."""
    if names:
        return select_strategies(plan.strategies, names)
    if plan.default_strategies is not None:
        return select_strategies(plan.strategies, ",".join(plan.default_strategies))
    return plan.strategies


def mentions(value: Any, placeholder: str) -> bool:
    """Whether any string in ``value`` (a parsed YAML structure) names ``{placeholder}``."""
    if isinstance(value, str):
        return f"{{{placeholder}}}" in value
    if isinstance(value, dict):
        return any(mentions(v, placeholder) for v in value.values())
    if isinstance(value, list):
        return any(mentions(v, placeholder) for v in value)
    return False


def fill(value: Any, values: dict[str, str], where: str = "plan") -> Any:
    """``value`` with every ``{name}`` in its strings replaced by ``values[name]``, on the parsed structure.

    Each string is rewritten once, left to right, so a filled-in path that itself holds braces or quotes is
    kept as it is. An unknown placeholder is a user error naming where it stands.
    """
    if isinstance(value, dict):
        return {k: fill(v, values, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, values, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            known = ", ".join(f"{{{k}}}" for k in values)
            raise UserError(f"{where}: unknown placeholder {{{name}}} in {value!r}; this plan has {known}")
        return values[name]

    return _PLACEHOLDER.sub(one, value)
