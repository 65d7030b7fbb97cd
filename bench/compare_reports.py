"""Compare two demo output trees: every audit report and the sweep tables must hold the same results.

    .venv/bin/python bench/compare_reports.py /work/baseline_runs/demo_quick runs/demo_quick

Compared: every ``report.json`` (one per run's audit), every ``row.json`` (a run's row of the sweep table)
and ``sweep.json`` (the table: rows, and mean and std per strategy and column), found by relative path.
Left out: keys that measure the machine rather than the result (timings, durations, peak memory,
creation times, version strings), at any depth. Strings are compared with each tree's own root replaced by
``<ROOT>``, so a path is equal when it is the same path inside its tree. Numbers are compared exactly
unless ``--rtol`` is given.

Exit 0 when equal; 1 with the differing files and keys (up to ``--limit`` lines) otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

COMPARED = ("report.json", "row.json", "sweep.json")
# A key whose value is a measurement of the run, not its result: timings, memory, dates, versions.
IGNORED_KEY = re.compile(r"(^|_)(seconds|s|time|timing|timings|duration|elapsed)$|^created$|version|peak_memory")


def compared_files(root: Path) -> set[str]:
    """The relative paths of the compared files under ``root``."""
    return {str(p.relative_to(root)) for name in COMPARED for p in root.rglob(name)}


def normalised(value: Any, root: str) -> Any:
    """``value`` without ignored keys, with the tree's root in every string replaced by ``<ROOT>``."""
    if isinstance(value, dict):
        return {k: normalised(v, root) for k, v in value.items() if not IGNORED_KEY.search(str(k))}
    if isinstance(value, list):
        return [normalised(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<ROOT>")
    return value


def differences(a: Any, b: Any, where: str, rtol: float) -> list[str]:
    """Each key path at which ``a`` and ``b`` differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}/{k}: only in A" for k in a.keys() - b.keys()]
        out += [f"{where}/{k}: only in B" for k in b.keys() - a.keys()]
        for k in a.keys() & b.keys():
            out += differences(a[k], b[k], f"{where}/{k}", rtol)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items in A, {len(b)} in B"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]", rtol)]
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        if (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rtol, abs_tol=0.0) or a == b:
            return []
        return [f"{where}: {a!r} != {b!r}"]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def compare_trees(a: Path, b: Path, rtol: float = 0.0) -> list[str]:
    """Every difference between the compared files of trees ``a`` and ``b``."""
    files_a, files_b = compared_files(a), compared_files(b)
    out = [f"{rel}: only in A" for rel in sorted(files_a - files_b)]
    out += [f"{rel}: only in B" for rel in sorted(files_b - files_a)]
    for rel in sorted(files_a & files_b):
        doc_a = normalised(json.loads((a / rel).read_text(encoding="utf-8")), str(a.resolve()))
        doc_b = normalised(json.loads((b / rel).read_text(encoding="utf-8")), str(b.resolve()))
        out += [f"{rel}:{d}" for d in differences(doc_a, doc_b, "", rtol)]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="one demo output dir (the --out of sftlab demo)")
    parser.add_argument("b", type=Path, help="the other")
    parser.add_argument("--rtol", type=float, default=0.0, help="relative tolerance for numbers (default: exact)")
    parser.add_argument("--limit", type=int, default=200, help="print at most this many differences")
    args = parser.parse_args(argv)
    for root in (args.a, args.b):
        if not root.is_dir():
            print(f"compare_reports: {root} is not a dir", file=sys.stderr)
            return 2
    if not compared_files(args.a):
        print(f"compare_reports: {args.a} holds no report.json, row.json or sweep.json", file=sys.stderr)
        return 2
    diffs = compare_trees(args.a, args.b, args.rtol)
    n_files = len(compared_files(args.a) | compared_files(args.b))
    if not diffs:
        print(f"equal: {n_files} files (timings, memory, dates and versions left out)")
        return 0
    for line in diffs[: args.limit]:
        print(line)
    more = len(diffs) - args.limit
    print(f"{len(diffs)} differences in {n_files} files" + (f" ({more} not shown)" if more > 0 else ""))
    return 1


if __name__ == "__main__":
    sys.exit(main())
