"""Measure (opt-in, ``lm_eval``): lm-evaluation-harness tasks on the base and on every tuned model.

``sftlab audit --lm-eval-tasks hellaswag,arc_easy`` (or ``measures: {lm_eval: {tasks: [...]}}`` in an audit
config) runs lm-eval's own tasks, as a library, on each model while the audit holds it loaded
(:mod:`sftlab.audit.lm_harness`). The section shows every figure lm-eval reports as its own table prints it
(value and stderr, four decimals; report.json keeps them whole), and the change of each tuned model with a
paired bootstrap 95% interval over the documents, from the per-document scores lm-eval logged. Gate values:
``lmeval_<task>_<metric>`` (a filter other than ``none`` appended: ``lmeval_gsm8k_exact_match_strict-match``),
in points for a share (acc, acc_norm, exact_match), in lm-eval's own unit otherwise.
"""

from __future__ import annotations

import html
import math
from functools import cache
from importlib.metadata import version
from typing import Any

from sftlab.audit.gate_value import GateValue
from sftlab.audit.lm_harness import LmEvalSettings, TaskPlan, evaluate, is_share, paired_change, plan_tasks
from sftlab.audit.measures.base import Measure
from sftlab.audit.measures.context import AuditContext, LoadedModel
from sftlab.audit.report.section import Finding, Section, Table, base_label, excludes_zero, fmt_delta
from sftlab.audit.score_cache import cached_scores
from sftlab.config import AuditConfig

NAME = "lm_eval"
# lm-eval's own figures, as it returns them per model (the report keeps them unchanged).
FIGURES = ("results", "groups", "group_subtasks", "n-shot", "n-samples", "versions", "higher_is_better")


def _settings(cfg: AuditConfig) -> LmEvalSettings:
    return LmEvalSettings.model_validate(cfg.measures.get(NAME) or {})


@cache
def _plan(settings_json: str) -> TaskPlan:
    # Resolving and loading the tasks (and indexing lm-eval's own) is done once per audit, not once per model.
    return plan_tasks(LmEvalSettings.model_validate_json(settings_json))


def check(cfg: AuditConfig) -> None:
    """lm-eval is installed, and every task is known and its documents load: before any model does."""
    _plan(_settings(cfg).model_dump_json())


def score(loaded: LoadedModel) -> dict[str, Any]:
    """One model's lm-eval run (:func:`sftlab.audit.lm_harness.evaluate`), cached like the audit's other scores:
    the base of many audits runs once."""
    settings = _settings(loaded.cfg)
    plan = _plan(settings.model_dump_json())
    batch = settings.batch_size or loaded.cfg.sampling.batch_size
    key = {"kind": "lm_eval", "model": loaded.cache_key, "tasks": plan.fingerprint, "specs": list(plan.specs),
           "settings": settings.model_dump(exclude={"tasks", "include_path"}), "batch_size": batch,
           "lm_eval": version("lm_eval")}
    return cached_scores(loaded.cache_dir, key, lambda: evaluate(loaded.model, loaded.tokenizer, plan, settings, batch),
                         lambda d: d, lambda d: d)


def changes(base: dict[str, Any], tuned: dict[str, Any], n_boot: int, seed: int) -> dict[str, dict[str, Any]]:
    """task -> ``metric,filter`` -> the tuned model's change against the base.

    A metric with per-document scores (lm-eval averages it over documents) gets the paired bootstrap interval
    over the documents both scored, and its unit: points when every score is in [0, 1]. Any other figure
    (a group's, a perplexity) gets the change of lm-eval's two figures, without an interval.
    """
    out: dict[str, dict[str, Any]] = {}
    for task, figures in tuned["results"].items():
        before = base["results"].get(task, {})
        better = tuned["higher_is_better"].get(task, {})
        for key, value in figures.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr") or not _number(value) or not _number(before.get(key)):
                continue
            entry: dict[str, Any] = {"metric": metric, "filter": filt, "base": before[key], "tuned": value,
                                     "delta": value - before[key], "ci_low": None, "ci_high": None, "n": None,
                                     "unit": "value", "higher_is_better": better.get(metric)}
            b, t = base["items"].get(task, {}).get(key), tuned["items"].get(task, {}).get(key)
            if b and t:
                delta, low, high, n = paired_change(b, t, n_boot, seed)
                entry.update(delta=delta, ci_low=low, ci_high=high, n=n, unit="points" if is_share(b, t) else "value")
            out.setdefault(task, {})[key] = entry
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _section(ctx: AuditContext) -> Section | None:
    runs = ctx.own_scores(NAME)
    if ctx.base not in runs:
        return None
    settings = _settings(ctx.cfg)
    data: dict[str, Any] = {
        "lm_eval_version": version("lm_eval"), "tasks": list(settings.tasks), "include_path": settings.include_path,
        "batch_size": settings.batch_size or ctx.cfg.sampling.batch_size, "num_fewshot": settings.num_fewshot,
        "limit": settings.limit, "apply_chat_template": settings.apply_chat_template,
        "models": {m: {k: run.get(k, {}) for k in FIGURES} for m, run in runs.items()},
        "changes": {m: changes(runs[ctx.base], runs[m], ctx.cfg.bootstrap_samples, ctx.cfg.sampling.seed)
                    for m in ctx.tuned if m in runs},
    }
    findings = [Finding(m, "lost" if (c["delta"] < 0) == bool(c["higher_is_better"]) else "gained",
                        f"lm-eval {task} {_metric(c)} {_change(c)}", f"lm_eval/{task}/{_metric(c)}")
                for m, per in data["changes"].items() for task, metrics in per.items() for c in metrics.values()
                if c["higher_is_better"] is not None and excludes_zero(c["ci_low"], c["ci_high"])]
    figures = _figures_table(data["models"], ctx.base)
    moved = _changes_table(data["changes"])
    note = (f"lm-evaluation-harness {data['lm_eval_version']} ran its own tasks on each model as loaded by the audit "
            f"(its HFLM wrapper, batch size {data['batch_size']}). Its figures stand as it reports them (value ± "
            "stderr, four decimals as its own table prints them; report.json keeps every digit). Δ is tuned − base; "
            "the 95% interval is a paired bootstrap over the documents both models scored, from lm-eval's logged "
            "per-document scores (shares in percentage points). A group's figure, or a metric lm-eval does not "
            "average over documents, has its change and no interval.")
    return Section(NAME, "lm-evaluation-harness tasks", data,
                   f"<p>{html.escape(note)}</p>{figures.to_html()}<h3>Changes against the base</h3>{moved.to_html()}",
                   f"{note}\n\n{figures.to_markdown()}\n\n### Changes against the base\n\n{moved.to_markdown()}",
                   findings)


def _figures_table(models: dict[str, dict[str, Any]], base: str) -> Table:
    """lm-eval's own table (tasks, version, filter, n-shot, metric, value ± stderr), one block per model."""
    rows = []
    for model, run in models.items():
        for task, figures in run["results"].items():
            for key in sorted(figures):
                metric, _, filt = key.partition(",")
                value = figures[key]
                if not filt or metric.endswith("_stderr"):
                    continue
                stderr = figures.get(f"{metric}_stderr,{filt}")
                rows.append([base_label(base) if model == base else model, figures.get("alias", task),
                             str(run["versions"].get(task, "N/A")), filt, str(run["n-shot"].get(task, "")), metric,
                             _lm_eval_number(value), "±" if stderr is not None else "",
                             _lm_eval_number(stderr) if stderr is not None else ""])
    return Table(["model", "task", "version", "filter", "n-shot", "metric", "value", "", "stderr"], rows)


def _lm_eval_number(value: Any) -> str:
    # As lm-eval's own table prints a figure (lm_eval.utils.make_table).
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _changes_table(per_model: dict[str, dict[str, Any]]) -> Table:
    rows = [[m, task, _metric(c), _lm_eval_number(c["base"]), _lm_eval_number(c["tuned"]), _change(c),
             "–" if c["n"] is None else str(c["n"])]
            for m, per in per_model.items() for task, metrics in per.items() for c in metrics.values()]
    return Table(["model", "task", "metric", "base", "tuned", "Δ [95% CI]", "documents paired"], rows)


def _metric(change: dict[str, Any]) -> str:
    return change["metric"] + ("" if change["filter"] == "none" else f" ({change['filter']})")


def _change(change: dict[str, Any]) -> str:
    scale, suffix, digits = (100.0, " pt", 1) if change["unit"] == "points" else (1.0, "", 4)
    ci = None if change["ci_low"] is None else (scale * change["ci_low"], scale * change["ci_high"])
    return fmt_delta(scale * change["delta"], digits, ci) + suffix


def gate_name(task: str, change: dict[str, Any]) -> str:
    """``lmeval_<task>_<metric>``, the filter appended when it is not ``none``."""
    return f"lmeval_{task}_{change['metric']}" + ("" if change["filter"] == "none" else f"_{change['filter']}")


def gates(data: dict[str, Any], base: str, tuned: str) -> list[GateValue]:
    """Every lm-eval figure's change: points for a share, lm-eval's own unit otherwise; with its paired
    interval where the figure is a mean over documents."""
    out = []
    for task, metrics in data.get("changes", {}).get(tuned, {}).items():
        for c in metrics.values():
            scale = 100.0 if c["unit"] == "points" else 1.0
            low, high = (None, None) if c["ci_low"] is None else (scale * c["ci_low"], scale * c["ci_high"])
            out.append(GateValue(gate_name(task, c), scale * c["delta"], low, high, c["unit"],
                                 f"lm-eval {task}: change in {_metric(c)}"))
    return out


MEASURE = Measure(
    name=NAME,
    description="lm-evaluation-harness tasks (--lm-eval-tasks): lm-eval's figures for every model, and each tuned "
                "model's change with a paired interval over documents",
    order=55,
    section=_section,
    gates=gates,
    opt_in=True,
    settings=LmEvalSettings,
    check=check,
    score=score,
)
