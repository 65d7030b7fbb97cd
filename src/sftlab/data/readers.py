"""Read data files into records: jsonl, json, csv, parquet, txt, and a `datasets` dataset saved on disk.

Nothing is dropped silently. Each record that cannot be used becomes a :class:`Rejection` with its
file, line (or row), field and reason; :func:`read_records` can write them to a quarantine jsonl, and
``ReadResult.counts`` counts them by reason. With ``strict=True`` the first bad record raises a
UserError instead. Problems with a path itself (missing, a directory that is not a `datasets` dataset,
an unknown extension) are always UserErrors: there is no record to quarantine.

Text handling: a UTF-8 byte-order mark is stripped, CRLF line ends are accepted, and bytes that are
not UTF-8 reject only the record (line, element, row) that holds them. One file holds one format: the
format most of its records have wins, and records of another format are rejected as mixed formats.
A .jsonl holding one JSON array, or a .json holding one object per line, is read by its content.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
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
from sftlab.errors import UserError

# A record (a jsonl line, a json element, a csv row, a txt document) longer than this is rejected: it is
# almost always a file read with the wrong format (a minified blob, a binary), not a real example.
MAX_RECORD_CHARS = 4_000_000
_SURROGATE = re.compile("[\ud800-\udfff]")
_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, as surrogateescape decodes them
# Quarantined raw text is cut to this many characters.
RAW_LIMIT = 10_000
EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet", ".txt")


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
    with out.open("w", encoding="utf-8") as fh:
        for rej in rejected:
            fh.write(json.dumps(rej.to_json(), ensure_ascii=False) + "\n")
    return out


# --------------------------------------------------------------------------------------------------
# Per file


@dataclass
class _Item:
    """One unit read from a file: a parsed value, or the error that stopped it from being parsed."""

    origin: Origin
    raw: str
    value: Any = None
    error: RecordError | None = None


def _read_one(path: Path, result: ReadResult, strict: bool, max_chars: int) -> None:
    items = list(_iter_items(path, max_chars))

    def reject(item: _Item, err: RecordError) -> None:
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


def _iter_items(path: Path, max_chars: int = MAX_RECORD_CHARS) -> Iterator[_Item]:
    """Every value in a data file, in order, with its origin; unreadable parts come as error items."""
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    if path.is_dir():
        yield from _dataset_items(path)
        return
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise UserError(
            f"{path}: unsupported file type {suffix or '(no extension)'!r}; use "
            f"{', '.join(EXTENSIONS)} or a dir written by datasets' save_to_disk"
        )
    if suffix == ".parquet":
        yield from _parquet_items(path)
        return
    text, error = _decode(path)
    if error is not None:
        yield _Item(Origin(str(path), None), "", error=error)
        return
    if not text.strip():
        yield _Item(Origin(str(path), None), "", error=RecordError("empty file", None, "the file is empty"))
        return
    if suffix in (".json", ".jsonl"):
        suffix = _json_layout(text, suffix)
    reader = {".jsonl": _jsonl_items, ".json": _json_items, ".csv": _csv_items, ".txt": _txt_items}[suffix]
    count = 0
    for item in reader(path, text, max_chars):
        count += 1
        yield item
    if count == 0:
        yield _Item(Origin(str(path), None), "", error=RecordError("empty file", None, "the file holds no records"))


def _json_layout(text: str, suffix: str) -> str:
    """Which JSON reader fits the content, whatever the extension says: a .jsonl that holds one JSON
    array is read as .json, and a .json that holds one object per line is read as .jsonl."""
    stripped = text.lstrip()
    if suffix == ".jsonl" and stripped.startswith("["):
        return ".json"
    if suffix == ".json" and stripped.startswith("{"):
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            first_line_end = text.find("\n", len(text) - len(stripped))
            if exc.msg == "Extra data" and 0 <= first_line_end <= exc.pos:
                return ".jsonl"
    return suffix


def _decode(path: Path) -> tuple[str, RecordError | None]:
    """The file as text: BOM stripped, undecodable bytes kept as lone surrogates for per-record rejection."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "", RecordError(
            "not UTF-8", None, "the file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8"
        )
    text = data.decode("utf-8", errors="surrogateescape")
    return text.removeprefix("\ufeff"), None


def _too_long(raw: str, max_chars: int) -> RecordError | None:
    if len(raw) > max_chars:
        return RecordError("record too long", None, f"the record is {len(raw):,} characters long (limit {max_chars:,})")
    return None


def _jsonl_items(path: Path, text: str, max_chars: int) -> Iterator[_Item]:
    # Split on "\n" only: str.splitlines would also split on U+2028 and friends, legal inside JSON strings.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        origin = Origin(str(path), number)
        error = _too_long(line, max_chars) or _bad_bytes(line)
        if error is not None:
            yield _Item(origin, line, error=error)
            continue
        try:
            yield _Item(origin, line, json.loads(line))
        except json.JSONDecodeError as exc:
            yield _Item(
                origin, line, error=RecordError("broken JSON", None, f"not valid JSON: {exc.msg} (column {exc.colno})")
            )


def _bad_bytes(raw: str) -> RecordError | None:
    """A RecordError when raw file text holds bytes that are not UTF-8 (decoded as lone surrogates)."""
    match = _UNDECODED.search(raw)
    if match is None:
        return None
    byte = ord(match.group()) - 0xDC00
    return RecordError(
        "not UTF-8", None, f"the text is not valid UTF-8 (byte 0x{byte:02x} at column {match.start() + 1})"
    )


class _JsonDoc:
    """Element-wise parsing of a JSON document, so each record knows the line it starts on."""

    def __init__(self, path: Path, text: str, max_chars: int) -> None:
        self.path, self.text, self.max_chars = path, text, max_chars
        self.decoder = json.JSONDecoder()
        self.newlines = [i for i, ch in enumerate(text) if ch == "\n"]
        self.count = 0  # records so far: each one's number in the file

    def line(self, pos: int) -> int:
        return bisect.bisect_left(self.newlines, pos) + 1

    def skip(self, pos: int) -> int:
        while pos < len(self.text) and self.text[pos] in " \t\r\n":
            pos += 1
        return pos

    def broken(self, exc: json.JSONDecodeError) -> _Item:
        return _Item(
            Origin(str(self.path), exc.lineno),
            self.text[exc.pos : exc.pos + 200],
            error=RecordError(
                "broken JSON",
                None,
                f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}); the rest of the file was not read",
            ),
        )

    def value_at(self, pos: int) -> tuple[_Item, int]:
        """The value starting at ``pos`` and the position after it (JSONDecodeError propagates)."""
        value, end = self.decoder.raw_decode(self.text, pos)
        raw = self.text[pos:end]
        self.count += 1
        origin = Origin(str(self.path), self.line(pos), self.count)
        error = _too_long(raw, self.max_chars) or _bad_bytes(raw)
        return _Item(origin, raw, None if error else value, error), end

    def array(self, pos: int) -> Iterator[_Item]:
        """The elements of the array whose ``[`` is at ``pos``."""
        pos = self.skip(pos + 1)
        if self.text[pos : pos + 1] == "]":
            return
        while True:
            item, pos = self.value_at(pos)
            yield item
            pos = self.skip(pos)
            sep = self.text[pos : pos + 1]
            if sep == "]":
                return
            if sep != ",":
                raise json.JSONDecodeError("expected ',' or ']' after an array element", self.text, pos)
            pos = self.skip(pos + 1)

    def members(self, pos: int) -> Iterator[tuple[str, int]]:
        """(key, value position) of the object whose ``{`` is at ``pos``; values are skipped over."""
        pos = self.skip(pos + 1)
        if self.text[pos : pos + 1] == "}":
            return
        while True:
            key, pos = self.decoder.raw_decode(self.text, pos)
            pos = self.skip(pos)
            if self.text[pos : pos + 1] != ":" or not isinstance(key, str):
                raise json.JSONDecodeError("expected a string key and ':'", self.text, pos)
            start = self.skip(pos + 1)
            _, pos = self.decoder.raw_decode(self.text, start)
            yield key, start
            pos = self.skip(pos)
            sep = self.text[pos : pos + 1]
            if sep == "}":
                return
            if sep != ",":
                raise json.JSONDecodeError("expected ',' or '}' after an object member", self.text, pos)
            pos = self.skip(pos + 1)


def _json_items(path: Path, text: str, max_chars: int) -> Iterator[_Item]:
    """A top-level array of records; an object of records (``{"id": {...}, ...}`` or ``{"data": [...]}``);
    or a single record object."""
    doc = _JsonDoc(path, text, max_chars)
    start = doc.skip(0)
    try:
        if text[start] == "[":
            yield from doc.array(start)
            return
        if text[start] != "{":
            value, _ = doc.decoder.raw_decode(text, start)
            raise RecordError(
                "not an object",
                None,
                f"the top level of a .json file must be an array or an object of records, got {type(value).__name__}",
            )
        whole = json.loads(text)
        try:
            detect_format(whole)
            single = True
        except RecordError:
            single = False
        if single:
            item, _ = doc.value_at(start)
            yield item
            return
        for key, pos in doc.members(start):
            if text[pos] == "[":
                yield from doc.array(pos)
            elif text[pos] == "{":
                yield doc.value_at(pos)[0]
            else:
                item, _ = doc.value_at(pos)
                item.error = RecordError(
                    "not an object", key, f"the value of key {key!r} is not a record (an object or an array of them)"
                )
                yield item
    except json.JSONDecodeError as exc:
        yield doc.broken(exc)
    except RecordError as exc:
        yield _Item(Origin(str(path), doc.line(start)), text[start : start + 200], error=exc)


def _csv_items(path: Path, text: str, max_chars: int) -> Iterator[_Item]:
    """One record per row after the header; ``messages``/``conversations`` cells hold JSON arrays."""
    csv.field_size_limit(max(max_chars, 131072))
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except csv.Error as exc:
        yield _Item(
            Origin(str(path), 1),
            text[:200],
            error=RecordError("bad csv row", None, f"the header is not valid CSV: {exc}"),
        )
        return
    header = [h.strip() for h in header]
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield _Item(
                Origin(str(path), start),
                "",
                error=RecordError("bad csv row", None, f"not valid CSV: {exc}; the rest of the file was not read"),
            )
            return
        origin = Origin(str(path), start)
        start = reader.line_num + 1
        if not row or all(not cell.strip() for cell in row):
            continue
        raw = ",".join(row)
        error = _too_long(raw, max_chars) or _bad_bytes(raw)
        if error is None and len(row) != len(header):
            error = RecordError("bad csv row", None, f"the row has {len(row)} fields but the header has {len(header)}")
        if error is not None:
            yield _Item(origin, raw, error=error)
            continue
        value: dict[str, Any] = dict(zip(header, row))
        for key in ("messages", "conversations"):
            if key in value:
                try:
                    value[key] = json.loads(value[key])
                except json.JSONDecodeError as exc:
                    error = RecordError(
                        "broken JSON", key, f"column {key!r} must hold a JSON array of turns: {exc.msg}"
                    )
        yield _Item(origin, raw, None if error else value, error)


def _txt_items(path: Path, text: str, max_chars: int) -> Iterator[_Item]:
    for line, doc in split_documents(text):
        origin = Origin(str(path), line)
        error = _too_long(doc, max_chars) or _bad_bytes(doc)
        yield _Item(origin, doc, None if error else {"text": doc}, error)


def split_documents(text: str) -> list[tuple[int, str]]:
    """Plain text -> (first line number, document).

    Documents are separated by blank (whitespace-only) lines; a file without any blank line between
    two lines of text holds one document per line.
    """
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    blocks: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 0
    for number, line in enumerate(lines, start=1):
        if line.strip():
            if not current:
                start = number
            current.append(line)
        elif current:
            blocks.append((start, current))
            current = []
    if current:
        blocks.append((start, current))
    if len(blocks) == 1:
        first, only = blocks[0]
        return [(first + i, line) for i, line in enumerate(only)]
    return [(first, "\n".join(block)) for first, block in blocks]


def _parquet_items(path: Path) -> Iterator[_Item]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not parquet
        yield _Item(
            Origin(str(path), None),
            "",
            error=RecordError("unreadable file", None, f"not a readable parquet file: {exc}"),
        )
        return
    if table.num_rows == 0:
        yield _Item(Origin(str(path), None), "", error=RecordError("empty file", None, "the file has no rows"))
        return
    for row_number, row in enumerate(table.to_pylist(), start=1):
        yield _Item(Origin(str(path), row_number), _dump(row), row)


def _dataset_items(path: Path) -> Iterator[_Item]:
    """Rows of a `datasets` Dataset saved with ``save_to_disk``; a DatasetDict must name its split."""
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise UserError(
            f"{path} is a datasets DatasetDict with splits {', '.join(splits)}; pass one split's dir, "
            f"for example {path / (splits[0] if splits else 'train')}"
        )
    if not (path / "dataset_info.json").is_file() or not (path / "state.json").is_file():
        raise UserError(
            f"{path} is a directory, not a data file, and not a dataset saved with datasets' save_to_disk "
            "(no dataset_info.json / state.json inside)"
        )
    from datasets import Dataset, load_from_disk

    dataset = load_from_disk(str(path))
    assert isinstance(dataset, Dataset)
    if len(dataset) == 0:
        yield _Item(Origin(str(path), None), "", error=RecordError("empty file", None, "the dataset has no rows"))
        return
    for row_number, row in enumerate(dataset, start=1):
        yield _Item(Origin(str(path), row_number), _dump(row), row)


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
    for item in _iter_items(Path(path)):
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


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


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
