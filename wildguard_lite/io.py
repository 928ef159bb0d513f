"""Batch files, streamed in: JSONL, CSV and Parquet (results are written by `results.py`).

Nothing here holds more than one row (or one Parquet batch) at a time, so memory does not
depend on the number of rows. A bad row is yielded with what is wrong with it and where
("FILE line N", "FILE row N"); what makes the rest of a file unreadable (a header without
'prompt', a quote never closed, a damaged Parquet page) is raised, naming the place.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generator, Iterator

from .contract import ITEM_FIELDS, check_fields, check_text, validate_item
from .errors import InvalidInputError, require

INPUT_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
BATCH_FIELDS = (*ITEM_FIELDS, "id")  # what a batch row may hold; anything else is refused
PARQUET_READ_ROWS = 1024  # rows decoded at a time from a Parquet input
# Python's csv module stops a whole file at a cell over 131,072 characters. A longer cell is
# read and refused on its own row (longer than any context); past this size it is far more
# likely a quote that was never closed, reported as that.
CSV_MAX_CELL = 1 << 24


@dataclass(frozen=True)
class InputRow:
    """One data row: `item` when it is a valid item, else `error` (what is wrong with it)."""

    index: int  # 0-based position among the data rows; the `index` of its result
    where: str  # "FILE line N" (JSONL, CSV) or "FILE row N" (Parquet), for messages
    item: dict[str, Any] | None = None
    error: str | None = None


def input_format(path: Path) -> str:
    fmt = INPUT_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise InvalidInputError(f"{path}: unknown input type '{path.suffix}'; use .jsonl, .csv or .parquet")
    return fmt


def iter_rows(path: str | os.PathLike, skip: int = 0) -> Generator[InputRow, None, None]:
    """Stream the rows of a batch file; a bad row is yielded with its error, not raised.

    Errors about the whole file (missing, wrong type, no 'prompt' column, unknown columns, a
    damaged part after which nothing can be read) are raised before or when they are met.
    `skip` rows are read past without validation (a resumed run that has already checked them).
    """
    path = Path(path)
    fmt = input_format(path)
    if not path.exists():
        raise InvalidInputError(f"{path}: no such input file")
    if not path.is_file():
        raise InvalidInputError(f"{path}: not a file; give a .jsonl, .csv or .parquet file")
    reader = {"jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows}[fmt]
    return _checked_rows(reader(path), skip)


def _checked_rows(raw_rows: Iterator[tuple[str, dict[str, Any] | str]], skip: int) -> Generator[InputRow, None, None]:
    for index, (where, raw) in enumerate(raw_rows):
        if index < skip:
            continue
        if isinstance(raw, str):
            yield InputRow(index, where, error=raw)
            continue
        try:
            check_fields(raw, BATCH_FIELDS)
            validate_item(raw)
            check_encodable(raw)
        except InvalidInputError as exc:
            yield InputRow(index, where, error=str(exc))
            continue
        yield InputRow(index, where, item=raw)


def check_input(path: str | os.PathLike) -> None:
    """Raise now what reading `path` would raise at its start (missing, wrong type, header)."""
    next(iter_rows(path), None)


def check_encodable(item: dict[str, Any]) -> None:
    """JSON escapes can carry lone surrogates ("\\ud800"), which are not text (nor writable as
    UTF-8, so an id holding one could not be written to the output either)."""
    for field in ("prompt", "response"):
        value = item.get(field)
        if isinstance(value, str):
            check_text(value, f"field '{field}'")
    if "id" in item:
        check_text(json.dumps(item["id"], ensure_ascii=False), "field 'id'")


def item_digest(item: dict[str, Any]) -> str:
    """Identifies an item's text, so a resumed run can tell its own rows from another input's."""
    data = json.dumps([item["prompt"], item.get("response") or ""], ensure_ascii=False)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()[:16]


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | str]]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            where = f"{path} line {n}"
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 BOM, as some editors write it
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield where, f"not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8"
                continue
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except (ValueError, RecursionError) as exc:
                yield where, f"invalid JSON ({str(exc)[:200]})"
                continue
            if not isinstance(item, dict):
                yield where, "expected a JSON object with a 'prompt' string"
                continue
            yield where, item


def _undecodable(cells: list[str]) -> str | None:
    """Bytes that are not UTF-8 arrive as lone surrogates (surrogateescape): name the first."""
    for k, cell in enumerate(cells):
        for i, ch in enumerate(cell):
            if "\udc80" <= ch <= "\udcff":
                return f"not UTF-8 text (byte 0x{ord(ch) - 0xDC00:02x} in cell {k + 1}, character {i}); save the file as UTF-8"
    return None


def _csv_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | str]]:
    if csv.field_size_limit() < CSV_MAX_CELL:
        csv.field_size_limit(CSV_MAX_CELL)  # process-wide, and only ever raised
    # utf-8-sig: spreadsheet programs start CSV files with a BOM, which is not part of the header.
    # surrogateescape: a row with bytes that are not UTF-8 is refused alone, with its line.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        # strict: a quote never closed is an error at the end of the file, not the rest of the
        # file swallowed into one cell.
        reader = csv.reader(f, strict=True)
        end = 0  # the last line of the last record read
        try:
            header = next(reader, None)
            if not header or "prompt" not in header:
                raise InvalidInputError(
                    f"{path} line 1: the header needs a 'prompt' column (and optionally 'response', 'id'); "
                    f"found {header or 'nothing'}"
                )
            try:
                check_fields(dict.fromkeys(header), BATCH_FIELDS, "the header has an ")
            except InvalidInputError as exc:
                raise InvalidInputError(f"{path} line 1: {exc}; rename or remove that column") from None
            columns = {name: header.index(name) for name in BATCH_FIELDS if name in header}
            end = reader.line_num
            for cells in reader:
                start, end = end + 1, reader.line_num  # a quoted cell may span lines
                where = f"{path} line {start}"
                if not cells:
                    continue
                bad_bytes = _undecodable(cells)
                if bad_bytes:
                    yield where, bad_bytes
                    continue
                if len(cells) > len(header):
                    yield (
                        where,
                        (
                            f"{len(cells)} cells but the header has {len(header)} columns; "
                            'quote cells that contain commas ("like, this")'
                        ),
                    )
                    continue
                if len(cells) <= columns["prompt"]:
                    yield where, f"no 'prompt' cell (the row has {len(cells)} of the header's {len(header)} columns)"
                    continue
                cell = {name: cells[i] if i < len(cells) else "" for name, i in columns.items()}
                item: dict[str, Any] = {"prompt": cell["prompt"]}
                # An empty response cell means prompt only, as an absent field does.
                if cell.get("response"):
                    item["response"] = cell["response"]
                if cell.get("id"):
                    item["id"] = cell["id"]
                yield where, item
        except csv.Error as exc:
            raise InvalidInputError(_csv_error(path, str(exc), end + 1, reader.line_num)) from None


def _csv_error(path: Path, reason: str, start: int, line: int) -> str:
    """What a csv.Error means for the user; nothing after it can be trusted, so it ends the file."""
    fix = 'close the quote, and write a quote inside a quoted cell as two ("")'
    if "end of data" in reason:
        return f"{path} line {start}: a quoted cell opened here is never closed (the file ends inside it); {fix}"
    if "field limit" in reason:
        return (
            f"{path} line {start}: a cell runs past {CSV_MAX_CELL:,} characters (to line {line}): "
            f"probably a quote that is never closed; {fix}"
        )
    if "expected after" in reason:
        return f"{path} line {line}: text after a quoted cell's closing quote ({reason}); {fix}"
    return f"{path} line {line}: invalid CSV ({reason})"


# Parquet column types the columns may have: text for prompt and response; an id that is text
# or an integer (other types have no faithful JSON form: cast them to string first).
def _parquet_type_ok(pa, name: str, kind) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    text = (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_null(kind)
        or getattr(pa.types, "is_string_view", lambda k: False)(kind)
    )
    return text or (name == "id" and pa.types.is_integer(kind))


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | str]]:
    pa = require("pyarrow", "parquet")
    pq = require("pyarrow.parquet", "parquet")
    try:
        source = pq.ParquetFile(path)
        schema = source.schema_arrow
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError variants
        raise InvalidInputError(f"{path}: not a readable Parquet file ({exc})") from None
    names = schema.names
    if "prompt" not in names:
        raise InvalidInputError(f"{path}: needs a 'prompt' column (and optionally 'response', 'id'); found {names}")
    try:
        check_fields(dict.fromkeys(names), BATCH_FIELDS, "the file has an ")
    except InvalidInputError as exc:
        raise InvalidInputError(
            f"{path}: {exc}; select the columns it needs (e.g. pyarrow: table.select(['prompt', 'response']))"
        ) from None
    for name in names:
        kind = schema.field(name).type
        if not _parquet_type_ok(pa, name, kind):
            want = "strings or integers" if name == "id" else "strings"
            raise InvalidInputError(
                f"{path}: column '{name}' has type {kind}; it must hold {want} "
                f"(cast it, e.g. pyarrow: table.set_column(i, '{name}', "
                f"table['{name}'].cast(pa.string())))"
            )
    n = 0
    groups = source.metadata.num_row_groups
    for group in range(groups):
        first, size = n, source.metadata.row_group(group).num_rows
        try:
            for batch in source.iter_batches(batch_size=PARQUET_READ_ROWS, row_groups=[group], columns=names):
                for row in batch.to_pylist():
                    n += 1
                    item = {"prompt": row["prompt"]}
                    if row.get("response") not in (None, ""):
                        item["response"] = row["response"]
                    if row.get("id") is not None:
                        item["id"] = row["id"]
                    yield f"{path} row {n}", item
        except (OSError, pa.ArrowException) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            reason = "".join(c if c.isprintable() else "?" for c in text[:200])
            raise InvalidInputError(
                f"{path} row group {group + 1} of {groups} (rows {first + 1}-{first + size}): cannot be read "
                f"at row {n + 1} ({reason}); the file is damaged: write it again from its source"
            ) from None
