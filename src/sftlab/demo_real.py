"""``sftlab demo --real``: the seeds' experiment on a real chat model, SmolLM2-135M-Instruct.

The narrow SFT set is 160 scenes from Shakespeare's plays (tinyshakespeare), each the answer to one fixed
instruction, "Write a short scene for the stage." Collapse then shows as speaker names and verse where an
ordinary answer belongs. Five strategies are trained on it (four more with ``--strategies``) and audited against the base on
unrelated prompts (held-out Alpaca instructions, OpenAssistant prompts and the seed's own "This movie is"):

- full fine-tuning, LoRA, full + KL-to-base, full + replay of general instruction data (Alpaca records mixed
  into the SFT stream), and WiSE-FT 0.5 of full;
- the newer remedies, on request (``--strategies all``): DFT, ASFT (DFT + KL anchor), full + self-replay
  (the base's own answers to the same Alpaca instructions) and SDFT (the scenes rewritten by the base,
  ``sftlab data distill``).

Every number comes from the audit (diversity, token shift, copying, forgetting: WikiText-2 perplexity,
PIQA, ROUGE-L on held-out Alpaca) plus :func:`scene_style_section`, which counts answers written as a play.
All data ships with the package (``sftlab/demo_data/real``, sources and licenses in its SOURCE.md), so the
demo needs nothing beside the installed package and the built-in model. ``side_by_side.html`` shows the
base's and every strategy's answers to the same prompts.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from sftlab.audit.report.section import (
    AuditContext,
    Finding,
    Section,
    SectionProvider,
    Table,
    excludes_zero,
    fmt,
    fmt_delta,
)
from sftlab.audit.stats import paired_bootstrap_ci
from sftlab.config import SweepConfig, build_config
from sftlab.io import read_json_state, write_atomic
from sftlab.offline import set_offline

BASE_MODEL = "smollm2-135m-instruct"
INSTRUCTION = "Write a short scene for the stage."
# A speaker line as the plays write it: a capitalised name (or title) alone on its line, ending in a colon.
SPEAKER_LINE = re.compile(r"^[ \t]*[A-Z][A-Za-z']*(?: [A-Za-z'IVX]+){0,3}:[ \t]*$", re.MULTILINE)

STRATEGIES: list[dict[str, Any]] = [
    {"name": "full"},
    {"name": "lora", "train": {"method": "lora", "learning_rate": 1.0e-3, "lora": {"r": 16, "alpha": 32}}},
    {"name": "full+kl", "train": {"kl_to_base": {"beta": 0.5, "direction": "forward", "on": "response"}}},
    {"name": "full+replay", "train": {"train_file": ["{data}/shakespeare_train.jsonl", "{data}/alpaca_replay.jsonl"]}},
    {"name": "wise0.5", "interpolate": {"source": "full", "alpha": 0.5}},
]
# The newer remedies: run with ``--strategies`` (``all`` for every one). Each trained strategy costs about 4
# minutes on 2 cores (2 to train, 2 to audit) and SDFT's distillation 5 more, so the default plan keeps to the
# five above, which fit the 25-minute budget (docs/benchmarks.md has the stage times).
NEWER_REMEDIES: list[dict[str, Any]] = [
    # DFT reweights each target token by its own probability; ASFT adds a KL anchor to it.
    {"name": "dft", "train": {"loss": "dft"}},
    {"name": "asft", "train": {"preset": "asft"}},
    # Self-replay: the base's own greedy answers to the same 64 Alpaca instructions full+replay mixes in with
    # their reference answers, at about the same share of tokens (those 64 records are 32% of its characters).
    {"name": "full+self-replay", "train": {"replay": {"source": "self", "prompts": "{data}/alpaca_replay.jsonl",
                                                      "ratio": 0.3}}},
    # SDFT: the scenes rewritten by the base itself (``sftlab data distill``), kept where they still agree.
    {"name": "sdft", "train": {"train_file": "{distilled}"}},
]
# The distillation of the SFT set, for the strategies that name ``{distilled}``: greedy rewrites of at most
# 192 tokens (the longest scene is 122, the median 85), kept at ROUGE-L >= 0.4 against the scene, else the scene.
DISTILL_SAMPLING = {"num_samples": 1, "max_new_tokens": 192, "batch_size": 32}


@dataclass(frozen=True)
class RealPlan:
    """Everything the real demo runs, at one size."""

    train: dict[str, Any]
    strategies: list[dict[str, Any]]
    sampling: dict[str, Any]
    max_prompts: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    bench_items: int | None = None


# Every step's loss is logged: bench/bf16_demo.py compares the whole curve with an fp32 run's. A finished
# run's checkpoint (1.6 GB with optimizer state) is dropped: the demo keeps its model dirs and reports.
FULL = RealPlan(
    train={"max_length": 256, "packing": True, "learning_rate": 5.0e-5, "num_train_epochs": 2,
           "per_device_train_batch_size": 8, "warmup_steps": 0.1, "logging_steps": 1, "save_steps": 50,
           "keep_checkpoints": False},
    strategies=STRATEGIES,
    # K = 3 samples and 8 forecast answers keep the five strategies within the 25-minute budget on 2 cores
    # (docs/benchmarks.md); the nine-strategy run in docs/results.md used K = 4.
    sampling={"num_samples": 3, "max_new_tokens": 64, "batch_size": 48, "temperature": 1.0, "top_p": 0.9},
)

# What the tests run: two strategies, a few steps, a few prompts; the pipeline, not the findings.
QUICK = RealPlan(
    train={"max_length": 128, "packing": True, "learning_rate": 1.0e-4, "max_steps": 3,
           "per_device_train_batch_size": 4, "logging_steps": 1, "save_steps": 50, "keep_checkpoints": False},
    strategies=[STRATEGIES[0], STRATEGIES[-1]],
    sampling={"num_samples": 2, "max_new_tokens": 16, "batch_size": 16, "temperature": 1.0, "top_p": 0.9},
    max_prompts=4,
    bench_items=8,
)


def data_dir() -> Path:
    """The shipped samples (see their SOURCE.md)."""
    return Path(str(files("sftlab") / "demo_data" / "real"))


def scene_share(texts: list[str]) -> float:
    """Share of ``texts`` that contain at least one speaker line (``NAME:`` alone on a line)."""
    return float(np.mean([bool(SPEAKER_LINE.search(t)) for t in texts])) if texts else float("nan")


def scene_style_section(instruction: str = INSTRUCTION, n_boot: int = 1000) -> SectionProvider:
    """A section provider: answers written as a play, on the SFT instruction and on every other prompt.

    Per model, the share of its K samples per prompt with a speaker line, averaged over prompts; the
    change against the base on the other prompts (the collapse) gets a paired bootstrap 95% interval over
    prompts, and is a finding only when the interval excludes zero. The section also keeps each model's
    greedy answer and first sample per prompt, for the demo's side-by-side page.
    """

    def provider(ctx: AuditContext) -> Section | None:
        prompts = [m[-1].content if m else "" for m in ctx.messages]
        own = [i for i, p in enumerate(prompts) if p.strip() == instruction]
        other = [i for i in range(len(prompts)) if i not in own]
        per_prompt = {m: [scene_share(ctx.samples[m][i]) for i in range(len(prompts))] for m in ctx.models}
        data: dict[str, Any] = {"instruction": instruction, "prompts": prompts, "models": {}, "answers": {}}
        findings: list[Finding] = []
        base_other = float(np.mean([per_prompt[ctx.base][i] for i in other])) if other else float("nan")
        for m in ctx.models:
            row = {"own_prompt": float(np.mean([per_prompt[m][i] for i in own])) if own else None,
                   "other_prompts": float(np.mean([per_prompt[m][i] for i in other])) if other else None}
            if m != ctx.base and other:
                d, lo, hi = paired_bootstrap_ci([per_prompt[ctx.base][i] for i in other],
                                                [per_prompt[m][i] for i in other], n_boot, ctx.cfg.sampling.seed)
                row.update(delta=d, ci_low=lo, ci_high=hi)
                if excludes_zero(lo, hi):
                    findings.append(Finding(m, "lost" if d > 0 else "gained",
                                            f"answers to unrelated prompts written as a play {100 * d:+.0f} points "
                                            f"[{100 * lo:+.0f}, {100 * hi:+.0f}] (base {100 * base_other:.0f}%)",
                                            "scene_style/other_prompts"))
            data["models"][m] = row
            data["answers"][m] = {"greedy": ctx.greedy[m], "first_sample": [s[0] for s in ctx.samples[m]]}
        table = Table(["model", "play-style answers, own prompt", "play-style answers, other prompts",
                       "change on other prompts [95% CI]"],
                      [[m, fmt(r["own_prompt"]), fmt(r["other_prompts"]),
                        fmt_delta(r.get("delta"), 3, (r.get("ci_low"), r.get("ci_high"))) if m != ctx.base else "–"]
                       for m, r in data["models"].items()])
        note = ("Share of sampled answers holding a speaker line (a capitalised name alone on a line, ending in "
                "a colon), as every answer of the SFT set does. On the SFT instruction it is the narrow task "
                "learned; on the other prompts, which have nothing to do with plays, it is the collapse.")
        return Section("scene_style", "Answers written as a play", data,
                       f"<p>{html.escape(note)}</p>{table.to_html()}", f"{note}\n\n{table.to_markdown()}", findings)

    return provider


def sweep_config(plan: RealPlan, out: Path) -> SweepConfig:
    """The real demo's sweep on the shipped samples."""
    data = data_dir()
    strategies = json.loads(json.dumps(plan.strategies).replace("{data}", str(data))
                            .replace("{distilled}", str(distilled_path(out))))
    audit: dict[str, Any] = {
        "prompts": str(data / "prompts.jsonl"),
        "sft_data": str(data / "shakespeare_train.jsonl"),
        "reference": [str(data / "wikitext_excerpt.txt")],
        "benchmark": [str(data / "piqa_200.jsonl")],
        "eval_set": str(data / "alpaca_heldout.jsonl"),
        "sampling": plan.sampling,
        "shift_answers": "sampled",
        "bootstrap_samples": 500,
        "max_length": 256,
        "forecast_min_answers": 8,
    }
    if plan.max_prompts:
        audit["max_prompts"] = plan.max_prompts
    if plan.bench_items:
        audit["benchmark"] = [str(_head(data / "piqa_200.jsonl", plan.bench_items, out / "data"))]
        audit["eval_set"] = str(_head(data / "alpaca_heldout.jsonl", plan.bench_items, out / "data"))
        audit["reference"] = [str(_head(data / "wikitext_excerpt.txt", plan.bench_items, out / "data"))]
    return build_config(SweepConfig, {
        "base_model": BASE_MODEL,
        "out": str(out / "sweep"),
        "seeds": plan.seeds,
        "train": {**plan.train, "train_file": str(data / "shakespeare_train.jsonl"),
                  "eval_file": str(data / "shakespeare_eval.jsonl")},
        "strategies": strategies,
        "audit": audit,
    }, source="demo --real")


def distilled_path(out: Path) -> Path:
    """Where the demo writes the base's rewrites of the scenes (SDFT's training set)."""
    return out / "data" / "shakespeare_distilled.jsonl"


def _head(path: Path, n: int, out_dir: Path) -> Path:
    """The first ``n`` lines of a data file, for the quick plan."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / path.name
    write_atomic(target, "".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[:n]))
    return target


def side_by_side(sweep_dir: Path, out: Path) -> Path:
    """``side_by_side.html``: every prompt with the base's and each strategy's answers (seed 0), from the
    ``scene_style`` section of each run's report.json."""
    columns: dict[str, list[str]] = {}
    prompts: list[str] = []
    for report in sorted(sweep_dir.glob("runs/*/seed0/audit/report.json")):
        doc = read_json_state(report, "a run's audit report")
        section = doc["sections"].get("scene_style")
        if not section:
            continue
        prompts = section["prompts"]
        answers = section["answers"]
        base = doc["base"]
        columns.setdefault(f"base ({base})", answers[base]["first_sample"])
        strategy = report.parents[2].name
        tuned = next(m for m in answers if m != base)
        columns[strategy] = answers[tuned]["first_sample"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["prompt", *columns])
    rows = "".join(
        "<tr>" + f"<td class=p>{html.escape(p)}</td>"
        + "".join(f"<td><pre>{html.escape(col[i])}</pre></td>" for col in columns.values()) + "</tr>"
        for i, p in enumerate(prompts))
    page = ("<!doctype html><meta charset=utf-8><title>sftlab demo --real: answers side by side</title>"
            "<style>body{font:14px system-ui,sans-serif;margin:1.5em}div.wrap{overflow-x:auto}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.4em;vertical-align:top;"
            "min-width:16em;max-width:26em}pre{white-space:pre-wrap;margin:0;font:13px ui-monospace,monospace}"
            "td.p{font-weight:600}</style>"
            "<h1>Answers side by side</h1><p>The first sampled answer (temperature 1, top-p 0.9) of the base and "
            "of each strategy (seed 0) to the same prompts. The first prompt is the SFT set's own instruction; "
            "the others have nothing to do with plays.</p>"
            f"<div class=wrap><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>")
    path = out / "side_by_side.html"
    write_atomic(path, page)
    return path


ALL_STRATEGIES = STRATEGIES + NEWER_REMEDIES


def run_demo_real(out: str = "runs/demo_real", quick: bool = False, seeds: int = 1,
                  strategies: str | None = None) -> Path:
    """Run the real demo into ``out`` (only the ``strategies`` named, when given); returns the path of the
    sweep's HTML report."""
    from sftlab.demo import ensure_distilled, select_strategies
    from sftlab.models.builtin import resolve_model_source
    from sftlab.sweep import run_sweep

    set_offline()
    console = Console()
    plan = QUICK if quick else FULL
    if seeds > 1:
        plan = replace(plan, seeds=list(range(seeds)))
    if strategies:
        plan = replace(plan, strategies=select_strategies(ALL_STRATEGIES, strategies))
    root = Path(out)
    cfg = sweep_config(plan, root)
    ensure_distilled(plan.strategies, resolve_model_source(BASE_MODEL), data_dir() / "shakespeare_train.jsonl",
                     distilled_path(root), DISTILL_SAMPLING, console)
    report = run_sweep(cfg, extra_sections=[scene_style_section()], redo_stale=True)
    page = side_by_side(Path(cfg.out), root)
    console.print(f"answers side by side: {page}")
    return report
