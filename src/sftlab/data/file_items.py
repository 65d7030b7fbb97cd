"""Data files as items, one format at a time: jsonl, json, csv, parquet, txt, and a `datasets` dataset on disk.

:func:`iter_items` yields each value a file holds (a jsonl line, a json element, a csv row, a txt document,
a parquet or dataset row) with its origin, or an error item for a part that could not be parsed, so the
caller (``sftlab.data.readers``) decides what to quarantine. Problems with a path itself (missing, a
directory that is not a `datasets` dataset, an unknown extension) are UserErrors.

Text handling: a UTF-8 byte-order mark is stripped, CRLF line ends are accepted, and bytes that are not
UTF-8 make an error item of only the record (line, element, row) that holds them. A .jsonl holding one
JSON array, or a .json holding one object per line, is read by its content.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftlab.data.records import Origin, RecordError, detect_format
from sftlab.errors import UserError

# A record (a jsonl line, a json element, a csv row, a txt document) longer than this is rejected: it is
# almost always a file read with the wrong format (a minified blob, a binary), not a real example.
MAX_RECORD_CHARS = 4_000_000
_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, as surrogateescape decodes them
EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet", ".txt")


@dataclass
class Item:
    """One unit read from a file: a parsed value, or the error that stopped it from being parsed."""

    origin: Origin
    raw: str
    value: Any = None
    error: RecordError | None = None


def iter_items(path: Path, max_chars: int = MAX_RECORD_CHARS) -> Iterator[Item]:
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
        yield Item(Origin(str(path), None), "", error=error)
        return
    if not text.strip():
        yield Item(Origin(str(path), None), "", error=RecordError("empty file", None, "the file is empty"))
        return
    if suffix in (".json", ".jsonl"):
        suffix = _json_layout(text, suffix)
    reader = {".jsonl": _jsonl_items, ".json": _json_items, ".csv": _csv_items, ".txt": _txt_items}[suffix]
    count = 0
    for item in reader(path, text, max_chars):
        count += 1
        yield item
    if count == 0:
        yield Item(Origin(str(path), None), "", error=RecordError("empty file", None, "the file holds no records"))


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


def _jsonl_items(path: Path, text: str, max_chars: int) -> Iterator[Item]:
    # Split on "\n" only: str.splitlines would also split on U+2028 and friends, legal inside JSON strings.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        origin = Origin(str(path), number)
        error = _too_long(line, max_chars) or _bad_bytes(line)
        if error is not None:
            yield Item(origin, line, error=error)
            continue
        try:
            yield Item(origin, line, json.loads(line))
        except json.JSONDecodeError as exc:
            yield Item(
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

    def broken(self, exc: json.JSONDecodeError) -> Item:
        return Item(
            Origin(str(self.path), exc.lineno),
            self.text[exc.pos : exc.pos + 200],
            error=RecordError(
                "broken JSON",
                None,
                f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}); the rest of the file was not read",
            ),
        )

    def value_at(self, pos: int) -> tuple[Item, int]:
        """The value starting at ``pos`` and the position after it (JSONDecodeError propagates)."""
        value, end = self.decoder.raw_decode(self.text, pos)
        raw = self.text[pos:end]
        self.count += 1
        origin = Origin(str(self.path), self.line(pos), self.count)
        error = _too_long(raw, self.max_chars) or _bad_bytes(raw)
        return Item(origin, raw, None if error else value, error), end

    def array(self, pos: int) -> Iterator[Item]:
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


def _json_items(path: Path, text: str, max_chars: int) -> Iterator[Item]:
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
        yield Item(Origin(str(path), doc.line(start)), text[start : start + 200], error=exc)


def _csv_items(path: Path, text: str, max_chars: int) -> Iterator[Item]:
    """One record per row after the header; ``messages``/``conversations`` cells hold JSON arrays."""
    csv.field_size_limit(max(max_chars, 131072))
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except csv.Error as exc:
        yield Item(
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
            yield Item(
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
            yield Item(origin, raw, error=error)
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
        yield Item(origin, raw, None if error else value, error)


def _txt_items(path: Path, text: str, max_chars: int) -> Iterator[Item]:
    for line, doc in split_documents(text):
        origin = Origin(str(path), line)
        error = _too_long(doc, max_chars) or _bad_bytes(doc)
        yield Item(origin, doc, None if error else {"text": doc}, error)


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


def _parquet_items(path: Path) -> Iterator[Item]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not parquet
        yield Item(
            Origin(str(path), None),
            "",
            error=RecordError("unreadable file", None, f"not a readable parquet file: {exc}"),
        )
        return
    if table.num_rows == 0:
        yield Item(Origin(str(path), None), "", error=RecordError("empty file", None, "the file has no rows"))
        return
    for row_number, row in enumerate(table.to_pylist(), start=1):
        yield Item(Origin(str(path), row_number), _dump(row), row)


def _dataset_items(path: Path) -> Iterator[Item]:
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
        yield Item(Origin(str(path), None), "", error=RecordError("empty file", None, "the dataset has no rows"))
        return
    for row_number, row in enumerate(dataset, start=1):
        yield Item(Origin(str(path), row_number), _dump(row), row)


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
