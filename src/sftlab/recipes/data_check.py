"""``sftlab data check FILE... [--eval-file F] [--tokenizer DIR] [--out DIR] [--strict]``.

Reads the files (quarantining bad records), measures quality (see :mod:`sftlab.data.quality`), prints
a summary and writes ``report.json`` and ``quarantine.jsonl`` (plus ``eval_quarantine.jsonl`` with an
eval file) into the output dir: by default ``<first file's stem>.check/`` beside the first file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from sftlab.data.quality import build_report, token_lengths
from sftlab.data.readers import ReadResult, read_records
from sftlab.errors import UserError


def default_out_dir(first_file: str | Path) -> Path:
    """``<stem>.check/`` beside the first data file (or beside a `datasets` dir)."""
    path = Path(first_file)
    return path.parent / f"{path.stem if path.is_file() else path.name}.check"


def _reading_summary(result: ReadResult, quarantine: Path) -> dict[str, Any]:
    return {
        "rejected": len(result.rejected),
        "rejected_by_reason": dict(sorted(result.counts.items())),
        "empty_responses": result.counts.get("empty response", 0),
        "quarantine": str(quarantine),
    }


def run_data_check(
    files: Sequence[str],
    eval_file: str | None = None,
    tokenizer: str | None = None,
    out: str | None = None,
    strict: bool = False,
    console: Console | None = None,
) -> int:
    """Check data files; return the exit code (0, or 1 when no usable record was found).

    ``strict``: the first bad record raises a UserError (exit code 2 from the CLI).
    """
    console = console or Console(stderr=True)
    if not files:
        raise UserError("data check needs at least one file")
    out_dir = Path(out) if out else default_out_dir(files[0])
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output dir {out_dir} ({exc.strerror}); pass --out DIR") from None

    quarantine = out_dir / "quarantine.jsonl"
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
    ) as bar:
        task = bar.add_task("reading")
        result = read_records(files, quarantine=quarantine, strict=strict)
        eval_result = None
        if eval_file:
            eval_result = read_records([eval_file], quarantine=out_dir / "eval_quarantine.jsonl", strict=strict)
        measure = None
        if tokenizer:
            from sftlab.models.load import load_tokenizer

            measure = token_lengths(load_tokenizer(tokenizer))
        quality = build_report(
            result.records,
            measure,
            eval_result.records if eval_result else None,
            step=lambda name: bar.update(task, description=name),
        )

    report: dict[str, Any] = {"files": [str(f) for f in files], "tokenizer": tokenizer}
    report.update(_reading_summary(result, quarantine))
    report.update(quality)
    if eval_result is not None:
        report["eval_overlap"]["eval_file"] = eval_file
        report["eval_overlap"]["eval_rejected"] = len(eval_result.rejected)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    _print_summary(report, out_dir, console)
    return 0 if result.records else 1


def _print_summary(report: dict[str, Any], out_dir: Path, console: Console) -> None:
    table = Table(title="data check", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row(
        "records", f"{report['records']:,}  " + ", ".join(f"{k} {v:,}" for k, v in report["by_format"].items())
    )
    rejected = ", ".join(f"{k} {v}" for k, v in report["rejected_by_reason"].items()) or "none"
    table.add_row("rejected", f"{report['rejected']:,}  ({rejected})")
    total = report["lengths"]["total"]
    if total.get("count"):
        table.add_row(
            f"length ({report['length_unit']})",
            f"median {total['median']}, mean {total['mean']}, p95 {total['p95']}, max {total['max']}; "
            + ", ".join(f"{n} over {k}" for k, n in report["lengths"]["over"].items()),
        )
    table.add_row(
        "exact duplicates",
        f"{report['exact_duplicates']['extra_copies']} extra copies in {report['exact_duplicates']['groups']} groups",
    )
    table.add_row(
        "same prompt twice",
        f"{report['duplicate_prompts']['extra_copies']} extra copies in {report['duplicate_prompts']['groups']} groups",
    )
    near = report["near_duplicates"]
    table.add_row("near duplicates", f"{near['pairs']} pairs (Jaccard >= {near['threshold']} on {near['shingle']})")
    if "eval_overlap" in report:
        ov = report["eval_overlap"]
        table.add_row(
            "train/eval overlap", f"{ov['exact']} exact, {ov['near']} near, of {ov['eval_records']} eval prompts"
        )
    table.add_row("written", f"{out_dir / 'report.json'}, {report['quarantine']}")
    console.print(table)
