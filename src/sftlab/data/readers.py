"""Read data files into records: jsonl, json, csv, parquet, txt, and a `datasets` dataset saved on disk.

Nothing is dropped silently. Each record that cannot be used becomes a :class:`Rejection` with its
file, line (or row), field and reason; :func:`read_records` can write them to a quarantine jsonl, and
``ReadResult.counts`` counts them by reason. With ``strict=True`` the first bad record raises a
UserError instead. Problems with a path itself (missing, a directory that is not a `datasets` dataset,
an unknown extension) are always UserErrors: there is no record to quarantine.

One file holds one format: the format most of its records have wins, and records of another format
are rejected as mixed formats. How each file type is split into items (and how bytes that are not UTF-8
reject only the record that holds them) is ``sftlab.data.file_items``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab.data.records import (
    ROLE_ALIASES,
    Message,
    Origin,
    Record,
    RecordError,
    alpaca_prompt,
    detect_format,
    parse_record,
)
from sftlab.data.file_items import MAX_RECORD_CHARS, Item, iter_items
from sftlab.errors import UserError
from sftlab.io import write_atomic

# Quarantined raw text is cut to this many characters.
RAW_LIMIT = 10_000
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class Rejection:
    """A record that was not used: where it is, which field, why (``code`` is the short counted reason)."""

    origin: Origin
    field: str | None
    reason: str
    raw: str
    code: str = ""

    def to_json(self) -> dict[str, Any]:
        """The quarantine line: ``{file, line, item, field, reason, code, raw}``."""
        return {
            "file": self.origin.file,
            "line": self.origin.line,
            "item": self.origin.item,
            "field": self.field,
            "reason": self.reason,
            "code": self.code,
            "raw": _printable(self.raw),
        }

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return f"{self.origin}{where}: {self.reason}"


@dataclass
class ReadResult:
    """The records read, the rejections, and the rejection count per reason code."""

    records: list[Record] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def by_format(self) -> Counter[str]:
        """Records per source format (alpaca, messages, oasst, ...)."""
        return Counter(r.format for r in self.records)

    @property
    def by_kind(self) -> Counter[str]:
        """Records per kind (text, prompt_completion, conversation)."""
        return Counter(r.kind for r in self.records)


def read_records(
    paths: Sequence[str | Path],
    quarantine: str | Path | None = None,
    strict: bool = False,
    max_record_chars: int = MAX_RECORD_CHARS,
) -> ReadResult:
    """Read every file in ``paths`` into one :class:`ReadResult`.

    ``quarantine``: write the rejections there as jsonl (always written, empty when nothing was rejected).
    ``strict``: raise a UserError at the first bad record, naming file:line and field.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    result = ReadResult()
    for path in paths:
        _read_one(Path(path), result, strict, max_record_chars)
    if quarantine is not None:
        write_quarantine(result.rejected, quarantine)
    return result


def write_quarantine(rejected: Sequence[Rejection], path: str | Path) -> Path:
    """Write rejections as jsonl (one ``{file, line, item, field, reason, code, raw}`` per line)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Atomic: a killed run leaves the previous quarantine or the new one whole, never half of the rejections.
    return write_atomic(out, "".join(json.dumps(rej.to_json(), ensure_ascii=False) + "\n" for rej in rejected))


# --------------------------------------------------------------------------------------------------
# One file: its majority format, and what is rejected


def _read_one(path: Path, result: ReadResult, strict: bool, max_chars: int) -> None:
    items = list(iter_items(path, max_chars))

    def reject(item: Item, err: RecordError) -> None:
        rej = Rejection(
            item.origin, err.field, err.message, _cap(err.raw if err.raw is not None else item.raw), err.code
        )
        if strict:
            where = f", field {err.field!r}" if err.field else ""
            raise UserError(
                f"{item.origin}{where}: {err.message} (strict mode stops at the first bad record; "
                "without it, bad records are quarantined and counted)"
            )
        result.rejected.append(rej)
        result.counts[err.code] += 1

    formats: list[str | RecordError | None] = []
    for item in items:
        if item.error is not None or not isinstance(item.value, dict):
            formats.append(None)
            continue
        try:
            formats.append(detect_format(item.value))
        except RecordError as exc:
            formats.append(exc)
    seen = Counter(f for f in formats if isinstance(f, str))
    # The most common format wins; a tie goes to the one seen first.
    majority = max(seen, key=lambda f: (seen[f], -formats.index(f))) if seen else None

    for item, fmt in zip(items, formats):
        if item.error is not None:
            reject(item, item.error)
        elif isinstance(fmt, RecordError):
            reject(item, fmt)
        elif fmt is not None and fmt != majority:
            reject(
                item,
                RecordError(
                    "mixed formats",
                    None,
                    f"this record is {fmt} but most records in {path.name} are {majority}; a file must hold one format",
                ),
            )
        else:
            try:
                records, problems = parse_record(item.value, item.origin, fmt)
            except RecordError as exc:
                reject(item, exc)
                continue
            for problem in problems:
                reject(item, problem)
            result.records.extend(records)




# --------------------------------------------------------------------------------------------------
# Prompts and plain text


def read_prompts(path: str | Path) -> list[list[Message]]:
    """Prompts for generation, each as chat turns ending in a user turn.

    Accepts a JSON string per element (``"..."``), ``prompt``, ``instruction`` (+ ``input``; or
    self-instruct ``instances``, one prompt per instance), ``text``, or ``messages``/``conversations``
    (trailing assistant turns, a reference answer, are dropped). A txt file holds one prompt per
    document (see :func:`split_documents`). Any bad entry is a UserError naming file:line.
    """
    prompts: list[list[Message]] = []
    for item in iter_items(Path(path)):
        if item.error is not None:
            raise UserError(f"{item.origin}: {item.error.message}")
        try:
            prompts.extend(_prompt_turns(item.value))
        except RecordError as exc:
            where = f", field {exc.field!r}" if exc.field else ""
            raise UserError(f"{item.origin}{where}: {exc.message}") from None
    if not prompts:
        raise UserError(f"{path}: no prompts found")
    return prompts


def _prompt_turns(value: Any) -> list[list[Message]]:
    if isinstance(value, str):
        if not value.strip():
            raise RecordError("empty prompt", None, "the prompt is empty")
        return [[Message("user", value)]]
    if not isinstance(value, dict):
        raise RecordError("not an object", None, f"a prompt must be a string or an object, got {type(value).__name__}")
    for key, role_key, content_key in (("messages", "role", "content"), ("conversations", "from", "value")):
        if key in value:
            turns = value[key]
            if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
                raise RecordError("wrong type", key, f"{key!r} must be an array of turn objects")
            messages = [
                Message(
                    ROLE_ALIASES.get(str(t.get(role_key, "")).lower(), str(t.get(role_key, "")).lower()),
                    str(t.get(content_key, "")),
                )
                for t in turns
            ]
            while messages and messages[-1].role == "assistant":
                messages.pop()
            if not messages or messages[-1].role != "user":
                raise RecordError(
                    "no final user turn", key, f"{key!r} must end with a user turn (after dropping a final answer)"
                )
            return [messages]
    if isinstance(value.get("instruction"), str):
        instances = value.get("instances")
        if isinstance(instances, list) and instances:
            return [
                [Message("user", alpaca_prompt(value["instruction"], str(inst.get("input") or "")))]
                for inst in instances
            ]
        return [[Message("user", alpaca_prompt(value["instruction"], str(value.get("input") or "")))]]
    for key in ("prompt", "text"):
        if isinstance(value.get(key), str):
            return _prompt_turns(value[key])
    raise RecordError("unrecognised format", None, "expected prompt, instruction, text or messages")


def read_texts(path: str | Path) -> list[str]:
    """A plain-text corpus as documents: txt (see :func:`split_documents`) or records with ``text``.

    Every document must be usable: a bad one is a UserError naming file:line (a corpus is not quarantined).
    """
    result = read_records([path], strict=True)
    texts = []
    for record in result.records:
        if record.kind != "text":
            raise UserError(f"{record.origin}: a text corpus needs `text` records, this one is {record.format}")
        texts.append(record.text or "")
    if not texts:
        raise UserError(f"{path}: no text found")
    return texts



# --------------------------------------------------------------------------------------------------
# Small helpers


def _cap(raw: str) -> str:
    if len(raw) <= RAW_LIMIT:
        return raw
    return raw[:RAW_LIMIT] + f"... [cut: {len(raw):,} characters in all]"


def _printable(raw: str) -> str:
    """Undecodable bytes as ``\\xNN`` (other lone surrogates as ``\\uNNNN``), so the quarantine is valid UTF-8."""
    return _SURROGATE.sub(_escape_surrogate, raw)


def _escape_surrogate(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"
