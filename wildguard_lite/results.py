"""Batch results: rows in input order, appended to OUTPUT.partial (JSONL) and published to OUTPUT
(JSONL or Parquet) when the run finishes; a rerun resumes from what is there."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import IO, Any, Iterator

from .contract import LABEL_KEYS
from .errors import InvalidInputError, WildGuardLiteError, require
from .io import InputRow, item_digest

OUTPUT_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
PARQUET_WRITE_ROWS = 10_000  # rows per row group of a Parquet output


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
    out.update(
        {
            "is_parsing_error": False,
            "scores": {key: None for key in LABEL_KEYS},
            "error": f"{row.where}: {error or row.error}",
        }
    )
    return out


def _parquet_schema():
    pa = require("pyarrow", "parquet")
    score = pa.struct([(key, pa.float64()) for key in LABEL_KEYS])
    return pa.schema(
        [
            ("index", pa.int64()),
            ("item_sha256", pa.string()),
            ("id", pa.string()),
            *[(key, pa.string()) for key in LABEL_KEYS],
            ("is_parsing_error", pa.bool_()),
            ("scores", score),
            ("windows", pa.int64()),  # set for an item longer than the context judged in windows
            ("error", pa.string()),
        ]
    )


def _parquet_record(row: dict[str, Any]) -> dict[str, Any]:
    record = {
        name: row.get(name)
        for name in ("index", "item_sha256", *LABEL_KEYS, "is_parsing_error", "scores", "windows", "error")
    }
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
        self._file: IO[str] | None = None
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
                    raise WildGuardLiteError(
                        f"{path} line {n + 1}: not a wildguard-lite result row; remove it or choose another --output"
                    ) from None
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
            raise WildGuardLiteError(
                f"{self.output}: not a wildguard-lite result file ({exc}); remove it or choose another --output"
            ) from None

    @staticmethod
    def _in_order(path: Path, n: int, index: Any) -> int:
        if index != n:
            raise WildGuardLiteError(
                f"{path}: row {n + 1} has index {index}, expected {n} (results are written "
                "in input order); remove it or choose another --output"
            )
        return n

    def write(self, row: dict[str, Any]) -> None:
        # Serialised before anything is opened: a row that cannot be written leaves no empty file.
        line = json.dumps(row, ensure_ascii=False) + "\n"
        if self._file is None:
            if not self.partial.exists() and self.output.exists():
                self._partial_from_output()
            self._file = open(self.partial, "a", encoding="utf-8")
        self._file.write(line)
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
            if not self.output.exists():
                self._write_empty()  # an input without rows: a valid output without rows
            return  # nothing new: OUTPUT is already complete
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

    def _write_empty(self) -> None:
        tmp = self.output.with_name(self.output.name + ".tmp")
        if self.format == "jsonl":
            tmp.write_bytes(b"")
        else:
            pq = require("pyarrow.parquet", "parquet")
            pq.write_table(_parquet_schema().empty_table(), tmp)
        os.replace(tmp, self.output)

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
