"""The real demo's own pieces: its data and the answers side by side (its play-style count is the
``scene_style`` measure, :mod:`sftlab.audit.measures.scene_style`).

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
PIQA, ROUGE-L on held-out Alpaca) plus the ``scene_style`` measure, which counts answers written as a play.
The plan, its strategies and its data paths are in ``plans/real.yaml``.
All data ships with the package (``sftlab/demo_data/real``, sources and licenses in its SOURCE.md), so the
demo needs nothing beside the installed package and the built-in model. ``side_by_side.html`` shows the
base's and every strategy's answers to the same prompts.
"""

from __future__ import annotations

import html
import json
from importlib.resources import files
from pathlib import Path


def data_dir() -> Path:
    """The shipped samples (see their SOURCE.md)."""
    return Path(str(files("sftlab") / "demo_data" / "real"))


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
