"""Batch files, streamed: JSONL, CSV and Parquet in; resumable JSONL or Parquet out.

Nothing here holds more than one row (or one Parquet row group) at a time, so memory does not
depend on the number of rows. Results are written in input order, so a resumed run finds the
rows it has as a prefix of the input and checks them against the input as it streams.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generator, Iterator

from .contract import LABEL_KEYS, check_text, validate_item
from .errors import InvalidInputError, WildGuardLiteError, require

INPUT_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
OUTPUT_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
PARQUET_READ_ROWS = 1024  # rows decoded at a time from a Parquet input
PARQUET_WRITE_ROWS = 10_000  # rows per row group of a Parquet output


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

    Errors about the whole file (missing, wrong type, no 'prompt' column, not UTF-8 where the
    row cannot be told) are raised before or when they are met. `skip` rows are read past
    without validation (a resumed run that has already checked them).
    """
    path = Path(path)
    fmt = input_format(path)
    if not path.exists():
        raise InvalidInputError(f"{path}: no such input file")
    if not path.is_file():
        raise InvalidInputError(f"{path}: not a file; give a .jsonl, .csv or .parquet file")
    reader = {"jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows}[fmt]
    return _checked_rows(reader(path), skip)


def _checked_rows(raw_rows: Iterator[tuple[str, dict[str, Any] | str]],
                  skip: int) -> Generator[InputRow, None, None]:
    for index, (where, raw) in enumerate(raw_rows):
        if index < skip:
            continue
        if isinstance(raw, str):
            yield InputRow(index, where, error=raw)
            continue
        try:
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
    """JSON escapes can carry lone surrogates ("\\ud800"), which are not text."""
    for field in ("prompt", "response"):
        value = item.get(field)
        if isinstance(value, str):
            check_text(value, f"field '{field}'")


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


def _csv_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | str]]:
    # utf-8-sig: spreadsheet programs start CSV files with a BOM, which is not part of the header.
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or "prompt" not in header:
                raise InvalidInputError(
                    f"{path} line 1: the header needs a 'prompt' column (and optionally 'response', 'id'); "
                    f"found {header or 'nothing'}")
            columns = {name: header.index(name) for name in ("prompt", "response", "id") if name in header}
            end = reader.line_num
            for cells in reader:
                start, end = end + 1, reader.line_num  # a quoted cell may span lines
                where = f"{path} line {start}"
                if not cells:
                    continue
                if len(cells) > len(header):
                    yield where, (f"{len(cells)} cells but the header has {len(header)} columns; "
                                  "quote cells that contain commas (\"like, this\")")
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
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path}: not UTF-8 text ({exc.reason}); save the file as UTF-8") from None
    except csv.Error as exc:
        raise InvalidInputError(f"{path}: invalid CSV ({exc})") from None


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | str]]:
    pq = require("pyarrow.parquet", "parquet")
    try:
        source = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError variants
        raise InvalidInputError(f"{path}: not a readable Parquet file ({exc})") from None
    names = source.schema_arrow.names
    if "prompt" not in names:
        raise InvalidInputError(f"{path}: needs a 'prompt' column (and optionally 'response', 'id'); found {names}")
    columns = [c for c in ("prompt", "response", "id") if c in names]
    n = 0
    for batch in source.iter_batches(batch_size=PARQUET_READ_ROWS, columns=columns):
        for row in batch.to_pylist():
            n += 1
            item = {"prompt": row["prompt"]}
            if row.get("response") not in (None, ""):
                item["response"] = row["response"]
            if row.get("id") is not None:
                item["id"] = row["id"]
            yield f"{path} row {n}", item


def item_digest(item: dict[str, Any]) -> str:
    """Identifies an item's text, so a resumed run can tell its own rows from another input's."""
    data = json.dumps([item["prompt"], item.get("response") or ""], ensure_ascii=False)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()[:16]


# -- results --------------------------------------------------------------------------------
def result_row(row: InputRow, result: dict[str, Any] | None = None, error: str | None = None) -> dict[str, Any]:
    """The output row of an input row: its result, or an error record (`error` set, labels null)."""
    item = row.item
    out: dict[str, Any] = {"index": row.index, "item_sha256": item_digest(item) if item else None}
    if item and "id" in item:
        out["id"] = item["id"]
    if result is not None:
        out.update(result)
        return out
    out.update({key: None for key in LABEL_KEYS})
    out.update({"is_parsing_error": False, "scores": {key: None for key in LABEL_KEYS},
                "error": f"{row.where}: {error or row.error}"})
    return out


def _parquet_schema():
    pa = require("pyarrow", "parquet")
    score = pa.struct([(key, pa.float64()) for key in LABEL_KEYS])
    return pa.schema([("index", pa.int64()), ("item_sha256", pa.string()), ("id", pa.string()),
                      *[(key, pa.string()) for key in LABEL_KEYS], ("is_parsing_error", pa.bool_()),
                      ("scores", score), ("error", pa.string())])


def _parquet_record(row: dict[str, Any]) -> dict[str, Any]:
    record = {name: row.get(name) for name in ("index", "item_sha256", *LABEL_KEYS, "is_parsing_error", "scores", "error")}
    # Parquet needs one type per column: ids that are not strings keep their JSON text.
    ident = row.get("id")
    record["id"] = ident if ident is None or isinstance(ident, str) else json.dumps(ident)
    return record


class ResumableWriter:
    """Appends result rows to OUTPUT.partial (JSONL) and moves it to OUTPUT when finished.

    OUTPUT is JSONL or Parquet by its suffix. A rerun finds the rows done by an interrupted run
    (OUTPUT.partial) or a finished one (OUTPUT) as a prefix of the input, checks them, and
    appends the rest. Nothing is created until the first row is written, so a run refused up
    front leaves no file behind.
    """

    def __init__(self, output: str | os.PathLike):
        output = Path(output)
        self.output = output
        self.format = OUTPUT_SUFFIXES.get(output.suffix.lower())
        if self.format is None:
            raise InvalidInputError(f"{output}: unknown output type '{output.suffix}'; use .jsonl or .parquet")
        if self.format == "parquet":
            require("pyarrow.parquet", "parquet")
        self.partial = output.with_name(output.name + ".partial")
        if output.is_dir():
            raise WildGuardLiteError(f"{output}: is a folder; give a file name ending in .jsonl or .parquet")
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WildGuardLiteError(f"{output.parent}: cannot create the output folder ({exc.strerror})") from None
        if not os.access(output.parent, os.W_OK):
            raise WildGuardLiteError(f"{output.parent}: output folder is not writable")
        self._file = None
        self.written = 0
        if self.partial.exists():
            self._drop_cut_line()

    def _drop_cut_line(self) -> None:
        """An interrupted run may leave a last line without its newline: drop it (redone)."""
        size = self.partial.stat().st_size
        if size == 0:
            return
        with open(self.partial, "rb") as f:
            f.seek(max(0, size - 1))
            if f.read(1) == b"\n":
                return
            # Scan back in blocks for the last newline.
            pos = size
            while pos > 0:
                start = max(0, pos - 65536)
                f.seek(start)
                block = f.read(pos - start)
                cut = block.rfind(b"\n")
                if cut >= 0:
                    keep = start + cut + 1
                    break
                pos = start
            else:
                keep = 0
        with open(self.partial, "r+b") as f:
            f.truncate(keep)

    def done_rows(self) -> Iterator[tuple[int, str | None]]:
        """(index, item_sha256) of the rows already done, in order."""
        if self.partial.exists():
            yield from self._jsonl_done(self.partial)
        elif self.output.exists():
            if self.format == "parquet":
                yield from self._parquet_done()
            else:
                yield from self._jsonl_done(self.output)

    def _jsonl_done(self, path: Path) -> Iterator[tuple[int, str | None]]:
        with open(path, "rb") as f:
            for n, raw in enumerate(f):
                try:
                    row = json.loads(raw)
                    index, digest = int(row["index"]), row["item_sha256"]
                except (ValueError, KeyError, TypeError, RecursionError):
                    raise WildGuardLiteError(f"{path} line {n + 1}: not a wildguard-lite result row; "
                                             "remove it or choose another --output") from None
                yield self._in_order(path, n, index), digest

    def _parquet_done(self) -> Iterator[tuple[int, str | None]]:
        pq = require("pyarrow.parquet", "parquet")
        try:
            source = pq.ParquetFile(self.output)
            batches = source.iter_batches(batch_size=PARQUET_WRITE_ROWS, columns=["index", "item_sha256"])
            n = 0
            for batch in batches:
                for index, digest in zip(batch.column("index").to_pylist(), batch.column("item_sha256").to_pylist()):
                    yield self._in_order(self.output, n, index), digest
                    n += 1
        except (KeyError, ValueError, OSError) as exc:
            raise WildGuardLiteError(f"{self.output}: not a wildguard-lite result file ({exc}); "
                                     "remove it or choose another --output") from None

    @staticmethod
    def _in_order(path: Path, n: int, index: Any) -> int:
        if index != n:
            raise WildGuardLiteError(f"{path}: row {n + 1} has index {index}, expected {n} (results are written "
                                     "in input order); remove it or choose another --output")
        return n

    def write(self, row: dict[str, Any]) -> None:
        if self._file is None:
            if not self.partial.exists() and self.output.exists():
                self._partial_from_output()
            self._file = open(self.partial, "a", encoding="utf-8")
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()
        self.written += 1

    def _partial_from_output(self) -> None:
        """A finished run gets more rows: continue from a copy of its output."""
        tmp = self.partial.with_name(self.partial.name + ".tmp")
        if self.format == "jsonl":
            shutil.copyfile(self.output, tmp)
        else:
            pq = require("pyarrow.parquet", "parquet")
            with open(tmp, "w", encoding="utf-8") as f:
                for batch in pq.ParquetFile(self.output).iter_batches(batch_size=PARQUET_WRITE_ROWS):
                    for row in batch.to_pylist():
                        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, self.partial)

    def finish(self) -> None:
        """Close and publish OUTPUT (a Parquet output is written from the partial, then renamed)."""
        self.close()
        if not self.partial.exists():
            return  # nothing new: OUTPUT (if any) is already complete
        if self.format == "jsonl":
            os.replace(self.partial, self.output)
            return
        tmp = self.output.with_name(self.output.name + ".tmp")
        try:
            self._jsonl_to_parquet(self.partial, tmp)
            os.replace(tmp, self.output)
        finally:
            if tmp.exists():
                tmp.unlink()
        self.partial.unlink()

    @staticmethod
    def _jsonl_to_parquet(source: Path, target: Path) -> None:
        pa = require("pyarrow", "parquet")
        pq = require("pyarrow.parquet", "parquet")
        schema = _parquet_schema()
        with pq.ParquetWriter(target, schema) as writer, open(source, "rb") as f:
            chunk: list[dict[str, Any]] = []
            for raw in f:
                chunk.append(_parquet_record(json.loads(raw)))
                if len(chunk) == PARQUET_WRITE_ROWS:
                    writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                    chunk = []
            if chunk:
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
