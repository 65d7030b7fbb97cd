"""``sftlab data check FILE... [--eval-file F] [--tokenizer DIR] [--out DIR] [--strict]``.

Reads the files (quarantining bad records), measures quality (see :mod:`sftlab.data.quality`), prints
the first rejected records as a linter does (``file:line: reason``) and a summary, and writes
``report.json`` and ``quarantine.jsonl`` (plus ``eval_quarantine.jsonl`` with an eval file) into the output
dir: by default ``runs/data_check/<first file's stem>/`` under the working directory, as every verb writes
under ``runs/`` (the data's own folder may be read-only, and is left as it was).

Exit codes: 0 when there is a usable record (bad ones quarantined), 1 when none is usable, 2 on a user
error; with ``strict`` the first bad record is a user error.
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
from sftlab.data.readers import ReadResult, Rejection, read_records
from sftlab.errors import UserError
from sftlab.io import write_atomic


# Rejected records printed one per line; the rest are counted (all of them are in the quarantine file).
SHOWN_REJECTIONS = 5


def default_out_dir(first_file: str | Path) -> Path:
    """``runs/data_check/<stem>/`` under the working directory (``<name>`` for a `datasets` dir)."""
    path = Path(first_file)
    return Path("runs") / "data_check" / (path.stem if path.is_file() else path.name)


def rejection_line(rejection: Rejection) -> str:
    """A rejected record as a linter reports it: ``file:line: reason`` (the field named when the reason
    does not name it)."""
    reason = rejection.reason
    if rejection.field and f"'{rejection.field}'" not in reason:
        reason = f"field '{rejection.field}': {reason}"
    return f"{rejection.origin}: {reason}"


def print_rejections(rejected: Sequence[Rejection], quarantines: Sequence[Path], console: Console,
                     limit: int = SHOWN_REJECTIONS) -> None:
    """The first ``limit`` rejected records, one per line, then how many more there are and where all are."""
    for rejection in rejected[:limit]:
        console.print(rejection_line(rejection), markup=False, highlight=False, soft_wrap=True)
    if rejected:
        more = f"{len(rejected) - limit} more rejected; " if len(rejected) > limit else ""
        files = " and ".join(str(q) for q in quarantines)
        console.print(f"{more}every rejected record, with its raw text, is in {files}",
                      markup=False, highlight=False, soft_wrap=True)


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

    ``out``: the output dir (default :func:`default_out_dir`). ``strict``: the first bad record raises a
    UserError (exit code 2 from the CLI).
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
    write_atomic(out_dir / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    rejected, quarantines = list(result.rejected), [quarantine] if result.rejected else []
    if eval_result is not None and eval_result.rejected:
        rejected += eval_result.rejected
        quarantines.append(out_dir / "eval_quarantine.jsonl")
    print_rejections(rejected, quarantines, console)
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
