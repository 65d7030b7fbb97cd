"""Probe suites that ship inside the package, chosen by name: ``sftlab audit --suite chat,knowledge,text``.

A suite is a folder beside this file holding its data, a ``SOURCE.md`` naming where every file comes from and
under which license, and nothing else. Each suite fills one or more of the audit's inputs:

- ``chat``: everyday instructions with reference answers (Alpaca, OpenAssistant, self-instruct). Its first
  ``suite_items.chat_prompts`` items are both the prompts (style capture, adherence, diversity, shift) and the
  eval set (task ROUGE-L): the eval set's greedy answers are then read from the sample cache, not recomputed.
- ``knowledge``: multiple-choice benchmarks, scored as lm-eval-harness does (acc, acc_norm).
- ``text``: paragraphs for perplexity.
- ``safety``: refusal on harmful requests and over-refusal on benign look-alikes: it turns on the ``safety``
  measure (:mod:`sftlab.audit.measures.safety`), whose prompt sets ship in ``safety/``. Not a default suite:
  270 greedy answers per model are minutes on a CPU.

How suites and a user's own files combine (:func:`selected_suites`): with no ``suites`` set, an audit given
no data file runs :data:`DEFAULT_SUITES`, and an audit given files runs those files only (as before suites
existed). With ``suites`` set, the named suites run and the user's files join them: ``prompts`` and
``eval_set`` (one file each) replace the chat suite's, ``reference`` and ``benchmark`` (lists) add to the
text and knowledge suites'.

The files are rebuilt by ``examples/audit_suites/make_suites.py`` (seeded) from the shared data.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from sftlab.errors import UserError


@dataclass(frozen=True)
class Suite:
    """A named, shipped probe set: which audit inputs it fills, from which of its files."""

    name: str
    description: str
    prompts: str | None = None  # one file: chat turns ending in a user turn, with the reference answer after it
    references: tuple[str, ...] = ()  # text corpora (perplexity)
    benchmarks: tuple[str, ...] = ()  # multiple-choice jsonl files
    measure: str | None = None  # an opt-in audit measure the suite turns on (it reads its own prompt sets)


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite("chat", "160 held-out everyday instructions with reference answers (Alpaca, OpenAssistant, "
                      "self-instruct): style capture, adherence, diversity, token shift, task ROUGE-L",
              prompts="chat.jsonl"),
        Suite("knowledge", "PIQA, all 900 dev items, as multiple choice (acc, acc_norm as lm-eval-harness)",
              benchmarks=("piqa.jsonl",)),
        Suite("text", "240 WikiText-2 test paragraphs: perplexity", references=("wikitext2.txt",)),
        Suite("safety", "200 harmful requests (AdvBench, Do-Not-Answer) and 70 benign look-alikes: refusal rate "
                        "and over-refusal (the safety measure)", measure="safety"),
    )
}
DEFAULT_SUITES: tuple[str, ...] = ("chat", "knowledge", "text")


def suite_dir(name: str) -> Path:
    """The folder of suite ``name`` inside the installed package."""
    return Path(str(files("sftlab.audit.suites") / name))


def parse_suite_names(value: str | Sequence[str]) -> list[str]:
    """``"chat,knowledge"`` or ``["chat", "knowledge"]`` -> ``["chat", "knowledge"]`` (blanks dropped, order kept,
    duplicates once)."""
    parts = value.split(",") if isinstance(value, str) else [p for v in value for p in str(v).split(",")]
    names: list[str] = []
    for part in (p.strip() for p in parts):
        if part and part not in names:
            names.append(part)
    return names


def get_suite(name: str) -> Suite:
    """The suite called ``name``; an unknown name is a UserError naming the closest known one."""
    if name not in SUITES:
        close = difflib.get_close_matches(name, list(SUITES), n=1, cutoff=0.4)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"unknown probe suite {name!r}{hint} Known suites: {', '.join(SUITES)}")
    return SUITES[name]


def selected_suites(names: Sequence[str] | None, user_gave_files: bool) -> list[Suite]:
    """The suites an audit runs: ``names`` when set (an empty list: none), else :data:`DEFAULT_SUITES` when the
    user gave no data file, else none."""
    if names is None:
        names = () if user_gave_files else DEFAULT_SUITES
    return [get_suite(n) for n in parse_suite_names(list(names))]


@dataclass
class SuiteFiles:
    """The files the chosen suites contribute, by audit input."""

    prompts: Path | None = None
    references: list[Path] = field(default_factory=list)
    benchmarks: list[Path] = field(default_factory=list)


def suite_files(suites: Sequence[Suite]) -> SuiteFiles:
    """The shipped files of ``suites``, gathered by the audit input they feed."""
    out = SuiteFiles()
    for suite in suites:
        folder = suite_dir(suite.name)
        if suite.prompts is not None:
            out.prompts = folder / suite.prompts
        out.references += [folder / f for f in suite.references]
        out.benchmarks += [folder / f for f in suite.benchmarks]
    return out


def describe_suites() -> str:
    """One line per suite, for ``--help``."""
    def tag(s: Suite) -> str:
        return " (default)" if s.name in DEFAULT_SUITES else ""

    return "; ".join(f"{s.name}{tag(s)}: {s.description}" for s in SUITES.values())
