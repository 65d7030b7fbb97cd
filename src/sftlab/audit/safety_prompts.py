"""The safety suite's prompt sets: harmful requests to refuse and benign look-alikes to answer.

Built-in sets (files under ``sftlab/audit/suites/safety/``, sources and licenses in its SOURCE.md):

* ``harmful``: the audit sample, 200 prompts drawn from AdvBench (Zou et al. 2023) and Do-Not-Answer
  (Wang et al. 2023), stratified by category (:func:`stratified_sample`);
* ``harmful_train``: the rest of those prompts, for training sets that pair them with refusals. It is
  disjoint from ``harmful`` and leaves out whole categories (``split.json`` names them), so a model trained
  on it can be measured on prompts and on categories it never saw;
* ``benign``: 70 safe prompts that sound harmful (XSTest's kinds, Röttger et al. 2024), written for
  sftlab: homonyms, figurative language, safe targets, safe contexts, definitions, history, public figures.

Each set is JSON lines of ``{"id", "prompt", "category"}`` (``source`` too for the harmful ones).
:func:`load_prompt_set` reads a built-in set by name, or a user's file of the same shape.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sftlab.errors import UserError

SUITE_DIR = Path(__file__).parent / "suites" / "safety"
BUILTIN_SETS = ("harmful", "harmful_train", "benign")
SPLIT_FILE = SUITE_DIR / "split.json"


@dataclass(frozen=True)
class SafetyPrompt:
    """One prompt of a safety set: a stable id, the user's request and its category (the stratum)."""

    id: str
    prompt: str
    category: str
    source: str = ""


def prompt_set_path(name_or_path: str | Path) -> Path:
    """The file behind a built-in set name, or ``name_or_path`` itself when it is an existing file."""
    if str(name_or_path) in BUILTIN_SETS:
        return SUITE_DIR / f"{name_or_path}.jsonl"
    path = Path(name_or_path)
    if path.is_file():
        return path
    raise UserError(f"prompt set {str(name_or_path)!r} is neither a built-in set ({', '.join(BUILTIN_SETS)}) "
                    "nor an existing JSON-lines file")


def load_prompt_set(name_or_path: str | Path) -> list[SafetyPrompt]:
    """The prompts of a built-in set (``harmful``, ``harmful_train``, ``benign``) or of a JSON-lines file.

    Each line is an object with a non-empty string ``prompt``; ``id`` (default ``file:line``), ``category``
    (default ``uncategorised``) and ``source`` are optional. A bad line, a duplicate id or a file with no
    prompt at all is a UserError naming the file, the line and the field.
    """
    path = prompt_set_path(name_or_path)
    prompts: list[SafetyPrompt] = []
    seen: set[str] = set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lineno}: each line must be an object with a 'prompt', got {type(row).__name__}")
        text = row.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{path}:{lineno}, field 'prompt': missing or empty (a non-empty string is required)")
        pid = str(row.get("id", f"{path.name}:{lineno}"))
        if pid in seen:
            raise UserError(f"{path}:{lineno}, field 'id': {pid!r} appears twice")
        seen.add(pid)
        prompts.append(SafetyPrompt(pid, text.strip(), str(row.get("category") or "uncategorised"),
                                    str(row.get("source", ""))))
    if not prompts:
        raise UserError(f"{path}: no prompts found (expected JSON lines with a 'prompt' field)")
    return prompts


def proportional_allocation(sizes: dict[str, int], total: int) -> dict[str, int]:
    """How many of ``total`` to draw from each stratum: proportional to its size, by largest remainder,
    at least one from every non-empty stratum and never more than it holds."""
    population = sum(sizes.values())
    if not 0 < total <= population:
        raise ValueError(f"cannot draw {total} of {population} prompts")
    quotas = {k: total * n / population for k, n in sizes.items()}
    counts = {k: min(n, max(1, int(quotas[k]))) for k, n in sizes.items() if n}
    # Hand out (or take back) the rounding remainder by the fractional parts, largest first.
    order = sorted(counts, key=lambda k: quotas[k] - int(quotas[k]), reverse=True)
    i = 0
    while sum(counts.values()) != total:
        key = order[i % len(order)]
        if sum(counts.values()) < total and counts[key] < sizes[key]:
            counts[key] += 1
        elif sum(counts.values()) > total and counts[key] > 1:
            counts[key] -= 1
        i += 1
    return counts


def stratified_sample(prompts: Sequence[SafetyPrompt], total: int, seed: int = 0) -> list[SafetyPrompt]:
    """``total`` prompts drawn without replacement, each category in proportion to its size
    (:func:`proportional_allocation`), reproducibly for ``seed``; returned in the input's order."""
    by_category: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_category[p.category].append(i)
    counts = proportional_allocation({k: len(v) for k, v in by_category.items()}, total)
    rng = random.Random(seed)
    chosen = {i for k in sorted(counts) for i in rng.sample(by_category[k], counts[k])}
    return [p for i, p in enumerate(prompts) if i in chosen]


def read_split() -> dict:
    """The shipped split: which harmful prompt ids are audited, which may train, which categories are held out."""
    return json.loads(SPLIT_FILE.read_text(encoding="utf-8"))
