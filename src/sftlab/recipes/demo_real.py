"""The real demo's own pieces: the play-style section and the answers side by side.

``sftlab demo --real`` (``plans/real.yaml``) is the seeds' experiment on a real chat model,
SmolLM2-135M-Instruct.

The narrow SFT set is 160 scenes from Shakespeare's plays (tinyshakespeare), each the answer to one fixed
instruction, "Write a short scene for the stage." Collapse then shows as speaker names and verse where an
ordinary answer belongs. Five strategies are trained on it (four more with ``--strategies``) and audited
against the base on unrelated prompts (held-out Alpaca instructions, OpenAssistant prompts and the seed's own "This movie is"):

- full fine-tuning, LoRA, full + KL-to-base, full + replay of general instruction data (Alpaca records mixed
  into the SFT stream), and WiSE-FT 0.5 of full;
- the newer remedies, on request (``--strategies all``): DFT, ASFT (DFT + KL anchor), full + self-replay
  (the base's own answers to the same Alpaca instructions) and SDFT (the scenes rewritten by the base,
  ``sftlab data distill``).

Every number comes from the audit (diversity, token shift, copying, forgetting: WikiText-2 perplexity,
PIQA, ROUGE-L on held-out Alpaca) plus :func:`scene_style_section`, which counts answers written as a play.
The plan, its strategies and its data paths are in ``plans/real.yaml``.
All data ships with the package (``sftlab/demo_data/real``, sources and licenses in its SOURCE.md), so the
demo needs nothing beside the installed package and the built-in model. ``side_by_side.html`` shows the
base's and every strategy's answers to the same prompts.
"""

from __future__ import annotations

import html
import json
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

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

INSTRUCTION = "Write a short scene for the stage."
# A speaker line as the plays write it: a capitalised name (or title) alone on its line, ending in a colon.
SPEAKER_LINE = re.compile(r"^[ \t]*[A-Z][A-Za-z']*(?: [A-Za-z'IVX]+){0,3}:[ \t]*$", re.MULTILINE)

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


def head_lines(path: Path, n: int, out_dir: Path) -> Path:
    """A copy of the first ``n`` lines of a data file in ``out_dir`` (a quick plan's ``audit_items``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / path.name
    target.write_text("".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[:n]), encoding="utf-8")
    return target


def side_by_side(sweep_dir: Path, out: Path) -> Path:
    """``side_by_side.html``: every prompt with the base's and each strategy's answers (seed 0), from the
    ``scene_style`` section of each run's report.json."""
    columns: dict[str, list[str]] = {}
    prompts: list[str] = []
    for report in sorted(sweep_dir.glob("runs/*/seed0/audit/report.json")):
        doc = json.loads(report.read_text(encoding="utf-8"))
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
    path.write_text(page, encoding="utf-8")
    return path
