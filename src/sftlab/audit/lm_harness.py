"""lm-evaluation-harness tasks run by the audit: its settings, the task check, one model's run, and the
paired changes between two models' runs.

lm-eval (an optional extra: ``pip install 'sftlab[lm-eval]'``) is used as a library: each model the audit
has loaded is wrapped in lm-eval's own ``HFLM`` and scored by ``lm_eval.simple_evaluate`` with
``log_samples=True``, so every figure lm-eval reports is lm-eval's, computed as its CLI computes it. What
lm-eval does not give is a change between two models with an interval: :func:`paired_change` takes the
per-document scores lm-eval logged for both models, pairs them on the document id and bootstraps the mean
difference over documents (:func:`sftlab.audit.stats.paired_bootstrap_ci`). That is exact for the metrics
lm-eval aggregates by a plain mean (acc, acc_norm, exact_match, ...); for the others (perplexities, corpus
F1, BLEU) the change of lm-eval's own figure is reported without an interval.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from sftlab.audit.stats import paired_bootstrap_ci
from sftlab.errors import UserError
from sftlab.settings import StrictModel

INSTALL = "pip install 'sftlab[lm-eval]'"


class LmEvalSettings(StrictModel):
    """lm-evaluation-harness tasks (``--lm-eval-tasks``), run on the base and on every tuned model."""

    tasks: list[str] = Field(min_length=1, description="lm-eval task, group or tag names (hellaswag, arc_easy); a "
                             "task YAML file; or a dir of task YAMLs, which runs every task in it")
    include_path: list[str] = Field(default_factory=list, description="dirs of task YAMLs whose tasks `tasks` may "
                                    "name (lm-eval's --include_path)")
    limit: int | None = Field(None, ge=1, description="only the first N documents of each task (lm-eval's --limit)")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples (null: each task's own default)")
    batch_size: int | None = Field(None, ge=1, description="lm-eval's batch size (null: the audit's sampling.batch_size)")
    apply_chat_template: bool = Field(False, description="wrap each prompt in the model's chat template "
                                      "(lm-eval's --apply_chat_template)")
    bootstrap_iters: int = Field(100000, ge=0, description="lm-eval's own bootstrap for the stderr of metrics "
                                 "that are not plain means (its default)")


def require_lm_eval() -> Any:
    """The ``lm_eval`` package; a UserError naming the extra to install when it is missing."""
    try:
        import lm_eval
    except ImportError:
        raise UserError(f"--lm-eval-tasks runs lm-evaluation-harness, which is not installed: it is an optional "
                        f"extra of sftlab ({INSTALL}, which pins lm-eval 0.4.13)") from None
    return lm_eval


@cache
def task_manager(include: tuple[str, ...], defaults: bool) -> Any:
    """lm-eval's TaskManager over ``include`` (and its own tasks when ``defaults``). Indexing lm-eval's own
    thousands of task YAMLs takes seconds to tens of seconds, so each index is built once per process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include) or None, include_defaults=defaults)


@dataclass(frozen=True)
class TaskPlan:
    """The tasks an audit runs, resolved and loaded once before any model is."""

    specs: tuple[str, ...]  # what simple_evaluate is given: names and YAML paths
    include: tuple[str, ...]  # dirs of task YAMLs indexed beside (or instead of) lm-eval's own
    defaults: bool  # whether lm-eval's own tasks are indexed
    tasks: tuple[str, ...]  # the leaf tasks those specs load (a group expands to its tasks)
    aggregation: dict[str, dict[str, str]]  # task -> metric -> the name of lm-eval's aggregation ("mean", ...)
    fingerprint: str  # the tasks' configs and their local data files (a cache key)

    def manager(self) -> Any:
        """The TaskManager these specs are named in."""
        return task_manager(self.include, self.defaults)


def plan_tasks(settings: LmEvalSettings) -> TaskPlan:
    """Resolve ``settings.tasks``, load every task (and so its documents), and return the plan; each bad
    entry is a UserError: an unknown name (with the closest names lm-eval knows), a missing dir, a task
    whose data cannot be loaded (a hub data set while the hub is off)."""
    require_lm_eval()
    include = [_existing_dir(p, "include_path") for p in settings.include_path]
    specs: list[str] = []
    for entry in settings.tasks:
        path = Path(entry)
        if path.is_dir():  # a dir of task YAMLs: every task it defines
            # lm-eval's indexer skips a YAML it cannot parse without a word: name it rather than lose its task.
            for file in sorted([*path.rglob("*.yaml"), *path.rglob("*.yml")]):
                _check_yaml(file)
            include.append(str(path.resolve()))
            found = task_manager((str(path.resolve()),), False).all_subtasks
            if not found:
                raise UserError(f"lm-eval tasks: {entry} holds no task YAML (a file with a `task:` key)")
            specs += found
        elif path.suffix in (".yaml", ".yml"):
            if not path.is_file():
                raise UserError(f"lm-eval tasks: {entry}: no such task YAML")
            _check_yaml(path)
            specs.append(str(path.resolve()))
        else:
            specs.append(entry)
    include = list(dict.fromkeys(include))
    names = [s for s in specs if not s.endswith((".yaml", ".yml"))]
    # lm-eval's own index is built only when a name is not among the user's own tasks; a name that no YAML of
    # lm-eval's even mentions fails without it (building it reads all of them, seconds to tens of seconds).
    local = task_manager(tuple(include), False).all_tasks if include else []
    outside = [n for n in names if n not in local]
    for name in outside:
        text, named = _lm_eval_text()
        if name not in text:
            raise _unknown(name, [*named, *local])
    defaults = bool(outside)
    manager = task_manager(tuple(include), defaults)
    for name in names:
        if name not in manager.all_tasks:
            raise _unknown(name, manager.all_tasks)
    loaded = _load(manager, specs)
    aggregation = {name: {metric: getattr(fn, "__name__", str(fn)) for metric, fn in task.aggregation().items()}
                   for name, task in loaded["tasks"].items()}
    configs = [loaded["tasks"][name].dump_config() for name in sorted(loaded["tasks"])]
    blob = json.dumps({"configs": configs, "files": _local_files(configs)}, sort_keys=True, default=str)
    return TaskPlan(tuple(dict.fromkeys(specs)), tuple(include), defaults, tuple(loaded["tasks"]), aggregation,
                    hashlib.sha256(blob.encode()).hexdigest()[:24])


@cache
def _lm_eval_text() -> tuple[str, tuple[str, ...]]:
    """The text of every file of lm-eval's own tasks, and the values of the ``task``/``group``/``tag`` keys there.

    Each name lm-eval's index registers is written in one of those files (a task YAML, or a file it
    includes), so a name that occurs in none of them is unknown; the values are the candidates a typo is
    matched against.
    """
    import lm_eval.tasks

    texts = [path.read_text(encoding="utf-8", errors="replace")
             for path in Path(lm_eval.tasks.__file__).parent.rglob("*") if path.is_file() and path.suffix != ".pyc"]
    text = "\n".join(texts)
    named = re.findall(r"^\s*-?\s*(?:task|group|tag)\s*:\s*[\"']?([\w.:+()\-]+)", text, flags=re.M)
    return text, tuple(sorted(set(named)))


def _unknown(name: str, known: Sequence[str]) -> UserError:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UserError(f"unknown lm-eval task {name!r}{hint} (`lm-eval ls tasks` lists lm-eval's own; a dir of your "
                     "own task YAMLs can be given as a --lm-eval-tasks entry)")


class _AnyTagLoader(yaml.SafeLoader):
    """A safe YAML loader that reads any tag (lm-eval's ``!function``) as null: enough to check the syntax."""


_AnyTagLoader.add_multi_constructor("", lambda loader, suffix, node: None)


def _check_yaml(path: Path) -> None:
    """A UserError naming the file, line and column when ``path`` is not valid YAML."""
    try:
        yaml.load(path.read_text(encoding="utf-8"), Loader=_AnyTagLoader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise UserError(f"lm-eval tasks: {where}: not valid YAML ({problem}); fix the task file") from None


def _existing_dir(path: str, key: str) -> str:
    if not Path(path).is_dir():
        raise UserError(f"lm-eval {key}: {path} is not a dir of task YAMLs")
    return str(Path(path).resolve())


def _load(manager: Any, specs: Sequence[str]) -> dict[str, Any]:
    """The tasks, built: lm-eval reads each task's documents here, so a data set that cannot be had (the hub is
    off and it is not cached) fails before any model is loaded."""
    try:
        return manager.load(list(specs))
    except Exception as exc:  # a task's own loader may raise anything (datasets, a hub client, its YAML code)
        raise UserError(f"lm-eval tasks {', '.join(specs)}: could not be loaded ({type(exc).__name__}: {exc}); a task "
                        "that reads a hub data set needs the hub, or that data set in the local cache") from None


def _local_files(configs: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """path -> sha256 of every local file a task config names (a json task's ``data_files``), so editing the
    file changes the cache key."""
    found: dict[str, str] = {}

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, str) and len(value) < 4096 and Path(value).is_file():
            found[value] = hashlib.sha256(Path(value).read_bytes()).hexdigest()

    for config in configs:
        walk(config.get("dataset_kwargs"))
    return found


def evaluate(model: Any, tokenizer: Any, plan: TaskPlan, settings: LmEvalSettings, batch_size: int) -> dict[str, Any]:
    """One model's lm-eval run: ``simple_evaluate`` on lm-eval's ``HFLM`` wrapper of the loaded model.

    Returns lm-eval's own figures unchanged (``results``, ``groups``, ``n-shot``, ``n-samples``, ``versions``,
    ``higher_is_better``) and ``items``: task -> ``metric,filter`` -> doc id -> that document's score, for the
    metrics lm-eval averages over documents (what :func:`paired_change` pairs).
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    # HFLM warns that a model passed as an object may ignore its loading arguments: there are none to ignore.
    quiet = logging.getLogger("lm_eval")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    finally:
        quiet.setLevel(level)
    out = simple_evaluate(model=lm, tasks=list(plan.specs), task_manager=plan.manager(), num_fewshot=settings.num_fewshot,
                          limit=settings.limit, bootstrap_iters=settings.bootstrap_iters, log_samples=True,
                          apply_chat_template=settings.apply_chat_template)
    kept = {key: out.get(key, {}) for key in ("results", "groups", "group_subtasks", "n-shot", "n-samples", "versions",
                                               "higher_is_better")}
    kept["items"] = {task: item_scores(samples, plan.aggregation.get(task, {}))
                     for task, samples in out.get("samples", {}).items()}
    return json.loads(json.dumps(kept, default=str))  # plain JSON, as the cache and report.json hold it


def item_scores(samples: Sequence[Mapping[str, Any]], aggregation: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """``metric,filter`` -> doc id (a string) -> score, from lm-eval's logged samples of one task, for each
    metric whose aggregation is the plain mean (its figure is then the mean of these scores)."""
    out: dict[str, dict[str, float]] = {}
    for sample in samples:
        for metric in sample.get("metrics", []):
            value = sample.get(metric)
            if aggregation.get(metric) == "mean" and isinstance(value, (bool, int, float)):
                out.setdefault(f"{metric},{sample['filter']}", {})[str(sample["doc_id"])] = float(value)
    return out


def paired_change(base: Mapping[str, float], tuned: Mapping[str, float], n_boot: int,
                  seed: int) -> tuple[float, float, float, int]:
    """(mean change, its 95% interval, documents paired) of one metric, pairing the two models' scores on
    the document id: each bootstrap replicate resamples documents, with both models' scores of each.

    Documents scored for only one model are left out (both runs of one audit score the same ones).
    """
    ids = sorted(set(base) & set(tuned), key=lambda d: (len(d), d))  # numeric ids in numeric order
    delta, low, high = paired_bootstrap_ci([base[i] for i in ids], [tuned[i] for i in ids], n_boot, seed)
    return delta, low, high, len(ids)


def is_share(base: Mapping[str, float], tuned: Mapping[str, float]) -> bool:
    """True when every document's score lies in [0, 1] (acc, acc_norm, exact_match, mc2): the mean is then a
    share, and its change is given in percentage points."""
    return bool(base) and all(0.0 <= v <= 1.0 for scores in (base, tuned) for v in scores.values())
