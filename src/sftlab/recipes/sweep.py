"""``sftlab sweep``: train and audit several strategies on one base and data set, and compare them.

Each strategy x seed is one run under ``out/runs/<strategy>/seed<k>/`` (the train run dir, with the audit in
``audit/``). A run that finished has ``row.json``, so a re-run skips it: a sweep killed half-way resumes
where it stopped (and an interrupted training run inside it resumes from its own checkpoints). A run dir
made under other settings (``settings.sha``: the base's fingerprint, train and audit settings) is never skipped
or resumed as if it were this config's (see :func:`finished_row`).

Every row is measured from files only, like the audit: eval loss of the saved model on the eval set, the
audit's report.json (diversity, shift, forgetting, task, world), and the cost the run recorded. The
comparison lives in ``out/sweep.{md,html,json}`` and ``out/plots/``: mean ± std over seeds per strategy,
plus Pareto plots of task score against diversity kept and against forgetting.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table as RichTable

from sftlab.audit.measures import registry
from sftlab.audit.measures.base import Measure
from sftlab.config import (
    AuditConfig,
    StrategySpec,
    SweepConfig,
    TrainConfig,
    _deep_merge,
    build_config,
    load_config,
)
from sftlab.errors import UserError
from sftlab.io import read_json_state, remove_tree, write_atomic
from sftlab.models.reference import ModelRef, resolve_model
from sftlab.recipes.sweep_report import write_sweep_report
from sftlab.recipes.sweep_table import COLUMNS, format_cell

ROW_FILE = "row.json"
SETTINGS_FILE = "settings.sha"


@dataclass(frozen=True)
class RunSpec:
    """One strategy x seed."""

    strategy: StrategySpec
    seed: int
    run_dir: Path

    @property
    def label(self) -> str:
        """``strategy/seed<k>``: in messages, and the tuned model's label in its audit."""
        return f"{self.strategy.name}/seed{self.seed}"


def load_sweep(path: str, overrides: Sequence[str] = ()) -> SweepConfig:
    """Read and validate a sweep config, including every strategy's train config (errors come before any run)."""
    cfg = load_config(SweepConfig, path, list(overrides))
    check_runs(cfg)
    return cfg


def check_runs(cfg: SweepConfig) -> None:
    """Validate every strategy's train config and the audit config, so that errors come before any run."""
    for spec in plan(cfg):
        if spec.strategy.post_hoc is None:
            train_config(cfg, spec)
        elif spec.strategy.interpolate is None:  # intruders and SafeLoRA read a LoRA adapter
            source = next(s for s in cfg.strategies if s.name == spec.strategy.post_hoc.source)
            if train_config(cfg, RunSpec(source, spec.seed, spec.run_dir)).method != "lora":
                verb = "reduces the intruders of" if spec.strategy.intruders is not None else "projects the adapter of"
                raise UserError(f"strategy {spec.strategy.name!r} {verb} {source.name!r}, "
                                "which is not a LoRA strategy (method: lora)")
    audit_config(cfg, {"-": cfg.base_model}, "-", Path(cfg.out))


def plan(cfg: SweepConfig) -> list[RunSpec]:
    """Every run, trained strategies before the post-hoc steps (interpolations, intruder reduction) that read
    their models."""
    ordered = sorted(cfg.strategies, key=lambda s: s.post_hoc is not None)
    return [RunSpec(s, seed, Path(cfg.out) / "runs" / s.name / f"seed{seed}") for seed in cfg.seeds for s in ordered]


def train_config(cfg: SweepConfig, spec: RunSpec) -> TrainConfig:
    """The strategy's overlay on the sweep's shared train keys, with base, seed and run dir set by the sweep."""
    data = _deep_merge(cfg.train, spec.strategy.train)
    data.update(model_name_or_path=cfg.base_model, seed=spec.seed, output_dir=str(spec.run_dir))
    return build_config(TrainConfig, data, source=f"sweep strategy {spec.strategy.name!r}")


def audit_config(cfg: SweepConfig, tuned: dict[str, str], out: str, cache: Path) -> AuditConfig:
    """The sweep's audit keys for one tuned model (label -> dir); samples are cached sweep-wide so the base
    is sampled once."""
    data = {**cfg.audit, "base": cfg.base_model, "tuned": tuned, "out": out, "cache_dir": str(cache / "cache")}
    return build_config(AuditConfig, data, source="sweep audit")


# --------------------------------------------------------------------------------------------------
# Running


def train_run(cfg: SweepConfig, spec: RunSpec) -> tuple[Path, dict[str, Any]]:
    """Train one strategy (resuming its own checkpoints); returns the model dir and its cost."""
    from sftlab.recipes.train import run_train

    model_dir = run_train(train_config(cfg, spec))
    summary = read_json_state(spec.run_dir / "summary.json", "the training run's summary")
    return model_dir, {key: summary[key] for key in ("train_seconds", "peak_memory_mb", "trainable_params")}


def interpolate_run(cfg: SweepConfig, spec: RunSpec, rows: dict[tuple[str, int], dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    """WiSE-FT of the source strategy's model (same seed); its cost is the source's plus the mixing."""
    from sftlab.train.interpolate import interpolate_dirs

    assert spec.strategy.interpolate is not None
    source_name, alpha = spec.strategy.interpolate.source, spec.strategy.interpolate.alpha
    source = rows[(source_name, spec.seed)]
    started = time.perf_counter()
    (model_dir,) = interpolate_dirs(cfg.base_model, source["model_dir"], [alpha], str(spec.run_dir))
    cost = {
        "train_seconds": source["train_seconds"] + time.perf_counter() - started,
        "peak_memory_mb": source["peak_memory_mb"],
        "trainable_params": source["trainable_params"],
    }
    return Path(model_dir), cost


def intruders_run(cfg: SweepConfig, spec: RunSpec, rows: dict[tuple[str, int], dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    """The source strategy's LoRA adapter (same seed) with its intruder dimensions reduced; its cost is the
    source's plus the reduction."""
    from sftlab.train.intruders import reduce_intruders

    step = spec.strategy.intruders
    assert step is not None
    source = rows[(step.source, spec.seed)]
    started = time.perf_counter()
    model_dir = reduce_intruders(source["model_dir"], spec.run_dir / "adapter", top_k=step.top_k,
                                 threshold_epsilon=step.threshold_epsilon, mitigation_lambda=step.mitigation_lambda)
    cost = {key: source[key] for key in ("peak_memory_mb", "trainable_params")}
    return model_dir, {"train_seconds": source["train_seconds"] + time.perf_counter() - started, **cost}


def safelora_run(cfg: SweepConfig, spec: RunSpec, rows: dict[tuple[str, int], dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    """The source strategy's LoRA adapter (same seed) projected by SafeLoRA; its cost is the source's plus the
    projection."""
    from sftlab.train.safelora import safelora

    step = spec.strategy.safelora
    assert step is not None
    source = rows[(step.source, spec.seed)]
    started = time.perf_counter()
    out = spec.run_dir / "adapter"
    if out.exists():  # a projection interrupted before its row was written: made again from the adapter
        remove_tree(out, spec.run_dir)
    safelora(step.aligned, step.unaligned, source["model_dir"], out, threshold=step.threshold,
             num_layers=step.num_layers)
    cost = {key: source[key] for key in ("peak_memory_mb", "trainable_params")}
    return out, {"train_seconds": source["train_seconds"] + time.perf_counter() - started, **cost}


def eval_loss(model_dir: str | Path, cfg: SweepConfig, base_train: dict[str, Any]) -> float | None:
    """Mean token cross-entropy of a saved model on the sweep's eval file (prompt tokens masked), or None."""
    from sftlab.data.dataset import build_eval_dataset
    from sftlab.data.packing import SFTCollator
    from sftlab.data.readers import read_records
    from sftlab.models.load import load_model, load_tokenizer
    from sftlab.models.tokens import IGNORE_INDEX
    from sftlab.train.losses import cross_entropy

    eval_file = base_train.get("eval_file")
    if not eval_file:
        return None
    tcfg = build_config(TrainConfig, {**base_train, "model_name_or_path": str(model_dir), "packing": False},
                        source="sweep eval")
    tokenizer = load_tokenizer(str(model_dir))
    dataset = build_eval_dataset(read_records([eval_file]).records, tokenizer, tcfg)
    collate = SFTCollator(tokenizer)
    model = load_model(str(model_dir))
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(dataset), tcfg.per_device_eval_batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + tcfg.per_device_eval_batch_size, len(dataset)))])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total += float(cross_entropy(logits, batch["labels"])) * n
            count += n
    return total / count if count else None


def row_from_report(report: dict[str, Any], tuned_name: str) -> dict[str, Any]:
    """The table's audit-derived numbers for one tuned model, from its report.json: each measure's own
    cells (:func:`sftlab.audit.measures.registry.sweep_row`)."""
    return registry.sweep_row(report, tuned_name)


def run_settings(cfg: SweepConfig, spec: RunSpec, base: ModelRef) -> str:
    """A hash of what decides one run's result: the base model's fingerprint (a base retrained in place makes
    every run stale; the same built-in model converted under another cache root does not), the train or
    interpolation settings and the audit settings.

    Train keys that cannot change a finished run's result (logging, saving, ``torch_compile``: the
    trainer's own FINISHED_SAFE) are left out, so turning them on, or a new version adding one, does not
    make the runs already done stale.
    """
    from sftlab.recipes.train import FINISHED_SAFE

    mix = spec.strategy.post_hoc
    if mix is None:
        # The base enters through its fingerprint alone: its path (a converted dir's lies under the cache root)
        # says nothing about the result.
        made: dict[str, Any] = train_config(cfg, spec).model_dump(
            mode="json", by_alias=True, exclude=FINISHED_SAFE | {"model_name_or_path", "gguf_file"})
    else:
        # A post-hoc step is as new as the model it reads: a redone source makes it stale too.
        source = next(s for s in cfg.strategies if s.name == mix.source)
        made = {**mix.model_dump(mode="json"),
                "source": run_settings(cfg, RunSpec(source, spec.seed, spec.run_dir), base)}
    settings = {"base": base.fingerprint, "made": made, "audit": cfg.audit}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def finished_row(cfg: SweepConfig, spec: RunSpec, base: ModelRef, redo_stale: bool = False) -> dict[str, Any] | None:
    """The row of a run finished earlier with the same settings; None when it has not finished.

    A run started with other settings (``settings.sha``, written before it trains), finished or not, is an
    error rather than a silent skip (its numbers would not belong in this table), a resume across two
    settings, or a silent overwrite (they may be wanted). With ``redo_stale`` (the demo, whose runs are all
    derived from its own world) its directory is removed and the run is done again.
    """
    stamp = spec.run_dir / SETTINGS_FILE
    if stamp.is_file() and stamp.read_text() != run_settings(cfg, spec, base):
        if redo_stale:
            remove_tree(spec.run_dir, Path(cfg.out) / "runs")
            return None
        raise UserError(
            f"sweep run {spec.label} in {spec.run_dir} was made with other settings than this config's. "
            f"Delete that directory to redo it, or set another `out` for this sweep."
        )
    if not stamp.is_file():
        return None
    try:
        return json.loads((spec.run_dir / ROW_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # missing, or torn by a crash before rows were written atomically: the run is redone


def run_one(cfg: SweepConfig, spec: RunSpec, base: ModelRef, rows: dict[tuple[str, int], dict[str, Any]],
            measures: Sequence[str | Measure] = ()) -> dict[str, Any]:
    """Train (or run a post-hoc step), evaluate and audit one run; writes and returns its row."""
    from sftlab.recipes.audit import run_audit

    spec.run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(spec.run_dir / SETTINGS_FILE, run_settings(cfg, spec, base))
    if spec.strategy.post_hoc is None:
        model_dir, cost = train_run(cfg, spec)
    elif spec.strategy.interpolate is not None:
        model_dir, cost = interpolate_run(cfg, spec, rows)
    elif spec.strategy.intruders is not None:
        model_dir, cost = intruders_run(cfg, spec, rows)
    else:
        model_dir, cost = safelora_run(cfg, spec, rows)
    audit_out = spec.run_dir / "audit"
    # Labelled by strategy and seed: every run's model dir is called "model", which says nothing.
    tuned_name = spec.label
    run_audit(audit_config(cfg, {tuned_name: str(model_dir)}, str(audit_out), Path(cfg.out)), measures=measures)
    report = read_json_state(audit_out / "report.json", "the run's audit report")
    row = {"strategy": spec.strategy.name, "seed": spec.seed, "model_dir": str(model_dir),
           "eval_loss": eval_loss(model_dir, cfg, cfg.train), **cost, **row_from_report(report, tuned_name)}
    write_atomic(spec.run_dir / ROW_FILE, json.dumps(row, indent=2))
    return row


def resolve_base(cfg: SweepConfig) -> tuple[SweepConfig, ModelRef]:
    """The sweep's base resolved once (its fingerprint keys every run's settings), and the config to run.

    A base given as a folder plus ``gguf_file`` becomes its converted dir in the config, so that one dir
    stands for it everywhere below: training, interpolation, audit. A built-in name stays as written (it
    labels the base in every report) and each stage loads its cached conversion.
    """
    base = resolve_model(cfg.base_model, cfg.gguf_file)
    if cfg.gguf_file is not None:
        cfg = cfg.model_copy(update={"base_model": base.path, "gguf_file": None})
    return cfg, base


def run_sweep(cfg: SweepConfig, measures: Sequence[str | Measure] = (), redo_stale: bool = False) -> Path:
    """Run every strategy x seed not yet done, then write the comparison; returns the path of sweep.html.

    ``measures``: opt-in audit measures every run's audit adds (see :func:`sftlab.recipes.audit.run_audit`).

    ``redo_stale``: redo finished runs made with other settings instead of stopping (see :func:`finished_row`).
    """
    cfg, base = resolve_base(cfg)
    console = Console()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    specs = plan(cfg)
    finished = [finished_row(cfg, spec, base, redo_stale) for spec in specs]  # stale runs are reported before any work starts
    for i, (spec, row) in enumerate(zip(specs, finished, strict=True), 1):
        if row is not None:
            rows[(spec.strategy.name, spec.seed)] = row
            console.print(f"[dim]sweep {i}/{len(specs)}: {spec.label} done earlier, skipped[/dim]")
            continue
        console.rule(f"sweep {i}/{len(specs)}: {spec.label}")
        rows[(spec.strategy.name, spec.seed)] = run_one(cfg, spec, base, rows, measures)
    table = aggregate([rows[(s.strategy.name, s.seed)] for s in specs], [s.name for s in cfg.strategies])
    html_path = write_sweep_report(out, table, cfg)
    print_table(console, table)
    console.print(f"[bold]sweep report[/bold]: {html_path}")
    return html_path


def run_sweep_file(path: str, overrides: Sequence[str] = ()) -> Path:
    """``sftlab sweep CONFIG [KEY=VALUE ...]``."""
    return run_sweep(load_sweep(path, overrides))


# --------------------------------------------------------------------------------------------------
# Aggregation


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    clean = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not clean:
        return None, None
    return float(np.mean(clean)), float(np.std(clean, ddof=1)) if len(clean) > 1 else None


def aggregate(rows: list[dict[str, Any]], order: Sequence[str]) -> dict[str, Any]:
    """Per strategy: mean and sample std over seeds of every column, plus the raw rows."""
    strategies = {}
    for name in order:
        mine = [r for r in rows if r["strategy"] == name]
        stats = {c.key: dict(zip(("mean", "std"), _mean_std([r.get(c.key) for r in mine]))) for c in COLUMNS}
        strategies[name] = {"seeds": [r["seed"] for r in mine], "columns": stats}
    return {"columns": [c.to_json() for c in COLUMNS], "strategies": strategies, "rows": rows}


def print_table(console: Console, table: dict[str, Any]) -> None:
    """A short console table: the headline columns that some run measured."""
    short = {"eval_loss": "eval loss", "task_score": "task", "style_capture": "SFT style",
             "diversity_kept_per_input": "div. kept",
             "genres_covered": "genres", "delta_perplexity": "Δ ppl", "shifted": "shifted", "train_seconds": "train s"}
    # As on the HTML page, a column no run measured (the world's genres on a real model) is left out.
    cols = [c for c in COLUMNS if c.key in short
            and any(s["columns"][c.key]["mean"] is not None for s in table["strategies"].values())]
    rich_table = RichTable(title="sweep (mean ± std over seeds)")
    rich_table.add_column("strategy", no_wrap=True)
    for c in cols:
        # Fold rather than cut: a narrow terminal wraps a number onto two lines instead of hiding digits.
        rich_table.add_column(short[c.key], justify="right", overflow="fold")
    for name, s in table["strategies"].items():
        rich_table.add_row(name, *[format_cell(c, s["columns"][c.key]) for c in cols])
    if not console.is_terminal:
        # A log file or pipe has no width of its own (rich assumes 80): give the table the width it needs.
        console = Console(width=max(console.width, 140), file=console.file)
    console.print(rich_table)
