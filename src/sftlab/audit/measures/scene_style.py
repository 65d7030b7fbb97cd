"""Measure (opt-in, ``scene_style``): answers written as a play, the collapse of ``sftlab demo --real``.

The real demo's narrow SFT set answers one instruction, "Write a short scene for the stage.", with a scene
from Shakespeare. A model that has collapsed onto it writes speaker lines (``NAME:`` alone on a line)
where an ordinary answer belongs. This measure counts them, on the SFT instruction (the task learned) and
on every other prompt (the collapse); the demo asks for it (``run_audit(cfg, measures=["scene_style"])``).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from sftlab.audit.gate_value import GateValue
from sftlab.audit.measures.base import Column, Measure, delta_gate
from sftlab.audit.measures.context import AuditContext
from sftlab.audit.report.section import Finding, Section, Table, excludes_zero, fmt, fmt_delta
from sftlab.audit.stats import paired_bootstrap_ci

INSTRUCTION = "Write a short scene for the stage."
# A speaker line as the plays write it: a capitalised name (or title) alone on its line, ending in a colon.
SPEAKER_LINE = re.compile(r"^[ \t]*[A-Z][A-Za-z']*(?: [A-Za-z'IVX]+){0,3}:[ \t]*$", re.MULTILINE)


def scene_share(texts: list[str]) -> float:
    """Share of ``texts`` that contain at least one speaker line (``NAME:`` alone on a line)."""
    return float(np.mean([bool(SPEAKER_LINE.search(t)) for t in texts])) if texts else float("nan")


def scene_style_section(instruction: str = INSTRUCTION, n_boot: int = 1000) -> Callable[[AuditContext], Section | None]:
    """The section of answers written as a play, on the SFT instruction and on every other prompt (a
    function of the audit context).

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


PLAY_STYLE_OTHER = Column("play_style_other", "answers written as a play (other prompts)", False, percent=True,
                          group="style", rank=40)


def sweep_row(data: dict[str, Any], base: str, tuned: str) -> dict[str, Any]:
    """The share of the tuned model's answers to the other prompts written as a play."""
    scene = data.get("models", {}).get(tuned)
    return {"play_style_other": scene["other_prompts"]} if scene else {}


def gates(data: dict[str, Any], base: str, tuned: str) -> list[GateValue]:
    """``play_style_other``: points of answers to unrelated prompts written as a play, against the base."""
    return delta_gate("play_style_other", data.get("models", {}).get(tuned), "points",
                      "answers to prompts other than the SFT instruction written as a play", scale=100.0)


MEASURE = Measure(
    name="scene_style",
    description="answers written as a play, on the SFT instruction and on other prompts (sftlab demo --real)",
    order=90,
    section=lambda ctx: scene_style_section()(ctx),
    columns=(PLAY_STYLE_OTHER,),
    row=sweep_row,
    gates=gates,
    opt_in=True,
)
