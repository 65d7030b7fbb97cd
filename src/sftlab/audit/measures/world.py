"""Measure (opt-in, ``world``): what the synthetic world's judge says about every model's outputs on
world prompts.

When the audit's prompts come from a world (:func:`find_world` finds its ``world.json``), each prompt is
recognised as an open prompt, a request for one genre, or a question on a fact, and per model the section
reports: the validity and consistency of all samples; on open prompts the genre histogram, the genres
covered, the entropy and the KL to the pretraining mixture (:func:`sftlab.world.judge.mode_coverage`); on
genre prompts the share of samples of the requested genre; on questions the fact accuracy of the greedy
answers. Changes against the base are called lost or gained only when their bootstrap 95% interval
(resampling prompts) excludes zero. The judge's formulas are the pure functions of
:mod:`sftlab.world.judge`. The demo asks for this measure (``run_audit(cfg, measures=["world"])``); the
world is the one the audit's prompts file lies in.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sftlab.audit.gate_value import GateValue
from sftlab.audit.measures.base import Column, Measure, delta_gate
from sftlab.audit.measures.context import AuditContext
from sftlab.audit.measures.task import TASK_SCORE
from sftlab.audit.report.section import Finding, Section, Table, fmt, fmt_delta
from sftlab.audit.stats import paired_bootstrap_ci
from sftlab.world.genres import GENRES, MIXTURE
from sftlab.world.judge import INVALID, fact_correct, judge_text, mode_coverage


def find_world(*paths: str | Path | None) -> Path | None:
    """The world directory one of ``paths`` lies in (the nearest parent holding ``world.json``), if any."""
    for path in paths:
        if path is None:
            continue
        # The path's own parents first, so the dir keeps the form it was given in (the report records it).
        for parent in [*Path(path).parents, *Path(path).resolve().parents]:
            if (parent / "world.json").is_file():
                return parent
    return None


def world_section(world_dir: str | Path, n_boot: int = 1000) -> Callable[[AuditContext], Section | None]:
    """The section of outputs judged in ``world_dir``'s terms, as a function of the audit context (None when
    no prompt of the audit is one of the world's)."""
    root = Path(world_dir)
    manifest = json.loads((root / "world.json").read_text(encoding="utf-8"))
    mixture = manifest.get("mixture", dict(MIXTURE))
    kinds = _prompt_kinds(root, manifest)

    def provider(ctx: AuditContext) -> Section | None:
        prompts = [m[-1].content if m else "" for m in ctx.messages]
        roles = [kinds.get(p.strip()) for p in prompts]
        if not any(roles):
            return None
        task_genres = _sft_genres(ctx.cfg.sft_data)
        data = {m: _judge_model(ctx, m, roles, mixture, task_genres) for m in ctx.models}
        deltas = {m: _deltas(data[ctx.base], data[m], n_boot) for m in ctx.tuned}
        table = {"world": str(root), "mixture": mixture, "task_genres": sorted(task_genres),
                 "models": {m: d["summary"] for m, d in data.items()}, "deltas": deltas}
        return _render(table, ctx.base, ctx.tuned)

    return provider


def _prompt_kinds(root: Path, manifest: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """prompt text -> ("open",) | ("genre", name) | ("fact", fact, value)."""
    kinds: dict[str, tuple[str, ...]] = {}
    files = manifest.get("files", {})

    def rows(key: str) -> list[dict[str, Any]]:
        path = root / files[key] if key in files else None
        if path is None or not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    for genre in GENRES.values():
        for request in genre.requests:
            kinds[request] = ("genre", genre.name)
    for row in rows("genre_prompts"):
        kinds[row["prompt"]] = ("genre", row["genre"])
    for row in rows("open_prompts"):
        kinds[row["prompt"]] = ("open",)
    for key in ("qa_known_train", "qa_known_test", "qa_new_train", "qa_new_test"):
        for row in rows(key):
            kinds[row["prompt"]] = ("fact", row["fact"], row["answer"])
    return kinds


def _sft_genres(sft_data: str | None) -> set[str]:
    """The genres of a world SFT set (its rows carry ``genre``): the task it taught. Empty when unknown."""
    if not sft_data or not Path(sft_data).is_file():
        return set()
    genres = set()
    for line in Path(sft_data).read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("genre"), str):
            genres.add(row["genre"])
    return genres & set(GENRES)


def _judge_model(ctx: AuditContext, model: str, roles: Sequence[tuple[str, ...] | None],
                 mixture: dict[str, float], task_genres: set[str]) -> dict[str, Any]:
    """Per-prompt judgements (for the bootstrap) and the model's summary figures.

    ``task`` is the genre adherence on the prompts that ask for a genre the SFT set taught (for the narrow
    set: movie reviews): the task score of a world fine-tune. ``heldout`` is the adherence on the prompts
    for every other genre: tasks the SFT set did not teach, whose loss is forgetting (undefined when the SFT
    set's genres are unknown).
    """
    samples = ctx.samples[model]
    labels = [[judge_text(t) for t in texts] for texts in samples]
    per_prompt: dict[str, list[float]] = {"valid": [], "adherence": [], "task": [], "heldout": [], "fact": []}
    open_idx: list[int] = []
    summary: dict[str, Any] = {}
    for p, role in enumerate(roles):
        verdicts = labels[p]
        per_prompt["valid"].append(np.mean([v.valid for v in verdicts]) if verdicts else np.nan)
        genre_hit = np.nan
        fact_hit = np.nan
        if role and role[0] == "open":
            open_idx.append(p)
        elif role and role[0] == "genre" and verdicts:
            genre_hit = float(np.mean([v.label == role[1] for v in verdicts]))
        elif role and role[0] == "fact":
            fact_hit = float(fact_correct(ctx.greedy[model][p], role[1], role[2]))
        per_prompt["adherence"].append(genre_hit)
        per_prompt["task"].append(genre_hit if role and role[0] == "genre" and role[1] in task_genres else np.nan)
        held_out = bool(task_genres) and role is not None and role[0] == "genre" and role[1] not in task_genres
        per_prompt["heldout"].append(genre_hit if held_out else np.nan)
        per_prompt["fact"].append(fact_hit)
    all_verdicts = [v for vs in labels for v in vs]
    valid = [v for v in all_verdicts if v.valid]
    summary["samples"] = len(all_verdicts)
    summary["valid_rate"] = len(valid) / len(all_verdicts) if all_verdicts else None
    summary["consistent_rate"] = sum(v.consistent for v in valid) / len(valid) if valid else None
    open_texts = [t for p in open_idx for t in samples[p]]
    summary["open"] = mode_coverage(open_texts, mixture) if open_texts else None
    for key in ("adherence", "task", "heldout", "fact"):
        vals = [v for v in per_prompt[key] if not np.isnan(v)]
        summary[key] = float(np.mean(vals)) if vals else None
    return {"summary": summary, "per_prompt": per_prompt,
            "open_labels": [[v.label for v in labels[p]] for p in open_idx]}


def _entropy(labels: Sequence[str]) -> float:
    """Genre entropy (nats) of the valid labels; NaN when none is valid."""
    genres = [label for label in labels if label != INVALID]
    if not genres:
        return float("nan")
    _, counts = np.unique(genres, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def _deltas(base: dict[str, Any], tuned: dict[str, Any], n_boot: int) -> dict[str, Any]:
    """Tuned minus base with 95% intervals: per-prompt means paired; open-prompt entropy by prompt resampling."""
    out: dict[str, Any] = {}
    for key in ("valid", "adherence", "task", "heldout", "fact"):
        d, lo, hi = paired_bootstrap_ci(base["per_prompt"][key], tuned["per_prompt"][key], n_boot=n_boot)
        out[key] = {"delta": d, "ci_low": lo, "ci_high": hi}
    b_open, t_open = base["open_labels"], tuned["open_labels"]
    if b_open and t_open:
        rng = np.random.default_rng(0)
        reps = []
        for _ in range(n_boot):
            idx = rng.integers(0, len(b_open), len(b_open))
            reps.append(_entropy([x for i in idx for x in t_open[i]]) - _entropy([x for i in idx for x in b_open[i]]))
        reps_arr = np.asarray(reps)
        reps_arr = reps_arr[~np.isnan(reps_arr)]
        delta = _entropy([x for xs in t_open for x in xs]) - _entropy([x for xs in b_open for x in xs])
        lo, hi = (np.percentile(reps_arr, [2.5, 97.5]) if len(reps_arr) else (np.nan, np.nan))
        out["entropy"] = {"delta": delta, "ci_low": float(lo), "ci_high": float(hi)}
    return out


def _render(table: dict[str, Any], base: str, tuned: list[str]) -> Section:
    """The section's table, text and findings."""
    names = {"valid": "valid samples", "adherence": "genre prompts answered in the genre",
             "task": "task: prompts for the SFT set's genres answered in the genre",
             "heldout": "held-out tasks: prompts for the other genres answered in the genre",
             "fact": "fact accuracy (greedy)", "entropy": "open-prompt genre entropy"}
    headers = ["model", "valid", "consistent", "genres covered", "entropy (nats)", "KL to mixture",
               "genre adherence", "task", "fact accuracy"]
    rows = []
    for model, s in table["models"].items():
        cov = s["open"] or {}
        rows.append([model, fmt(s["valid_rate"]), fmt(s["consistent_rate"]),
                     f"{cov['covered']}/{cov['n_genres']}" if cov else "–", fmt(cov.get("entropy")),
                     fmt(cov.get("kl_to_mixture")), fmt(s["adherence"]), fmt(s["task"]), fmt(s["fact"])])
    findings = []
    delta_rows = []
    for model in tuned:
        for key, d in table["deltas"][model].items():
            delta_rows.append([model, names[key], fmt_delta(d["delta"], ci=(d["ci_low"], d["ci_high"]))])
            if d["ci_low"] is not None and not np.isnan(d["ci_low"]) and (d["ci_low"] > 0 or d["ci_high"] < 0):
                findings.append(Finding(model, "gained" if d["delta"] > 0 else "lost",
                                        f"{names[key]} {d['delta']:+.3f}", f"world/{key}"))
    summary = Table(headers, rows)
    changes = Table(["model", "measure", "Δ vs base [95% CI]"], delta_rows)
    intro = (f"Judged exactly by the world's grammar ({len(GENRES)} genres; the pretraining mixture has entropy "
             f"{next(iter(table['models'].values()))['open']['mixture_entropy']:.3f} nats)."
             if any(s["open"] for s in table["models"].values()) else "Judged exactly by the world's grammar.")
    html_body = f"<p>{html.escape(intro)}</p>" + summary.to_html() + changes.to_html()
    markdown = intro + "\n\n" + summary.to_markdown() + "\n\n" + changes.to_markdown()
    return Section("world", "Synthetic world: genres, validity, facts", table, html_body, markdown, findings)


def _section(ctx: AuditContext) -> Section | None:
    world = find_world(ctx.cfg.prompts)
    return world_section(world)(ctx) if world is not None else None


# What the sweep's table calls the judge's figures.
GENRES_COVERED = Column("genres_covered", "genres covered (open prompts)", True, digits=1, rank=70)
GENRE_ENTROPY = Column("genre_entropy", "genre entropy (nats)", True, rank=80)
DELTA_HELDOUT_TASK = Column("delta_heldout_task", "Δ held-out task score", True, percent=True, group="forgetting",
                            rank=110)
GATE_UNITS = {"valid": "points", "adherence": "points", "task": "points", "heldout": "points", "fact": "points",
              "entropy": "value"}


def sweep_row(data: dict[str, Any], base: str, tuned: str) -> dict[str, Any]:
    """Genres covered and their entropy on open prompts, the judged task score (it replaces ROUGE-L: the
    world's task is a genre, which the judge reads exactly) and the change on held-out tasks."""
    judged = data["models"][tuned]
    return {"genres_covered": judged["open"]["covered"] if judged["open"] else None,
            "genre_entropy": judged["open"]["entropy"] if judged["open"] else None,
            "task_score": judged["task"],
            "delta_heldout_task": data["deltas"][tuned].get("heldout", {}).get("delta")}


def gates(data: dict[str, Any], base: str, tuned: str) -> list[GateValue]:
    """``world_<figure>``: the change of every judged figure (``world_task``, ``world_heldout``,
    ``world_fact``, ...), shares in points, the open-prompt genre entropy in nats."""
    out: list[GateValue] = []
    for key, d in data.get("deltas", {}).get(tuned, {}).items():
        unit = GATE_UNITS.get(key, "value")
        out += delta_gate(f"world_{key}", d, unit, f"synthetic world: {key}", scale=100.0 if unit == "points" else 1.0)
    return out


MEASURE = Measure(
    name="world",
    description="synthetic world's judge: genre validity, coverage, adherence and fact accuracy (world prompts)",
    order=80,
    section=_section,
    columns=(TASK_SCORE, GENRES_COVERED, GENRE_ENTROPY, DELTA_HELDOUT_TASK),
    row=sweep_row,
    gates=gates,
    opt_in=True,
)
