"""Batch jobs: stream a file of items through a classifier into a resumable result file.

A bounded window of rows is in flight at a time (memory does not grow with the file). Within a
window the items run sorted by their token ids, so items that share a prefix (one prompt with
the responses of several models, a prompt-only check before its full exchanges) run back to
back and the engine keeps the shared prefix in its KV cache; results are still written in input
order, as soon as every row before them is done.

    >>> from wildguard_lite.batch import run_batch
    >>> report = run_batch("in.jsonl", "out.jsonl", "wildguard-q4_k_m.gguf")
    >>> print(report.summary())
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from .errors import InvalidInputError, WildGuardLiteError
from .config import RuntimeConfig, make_config
from .io import InputRow, check_input, item_digest, iter_rows
from .results import ResumableWriter, result_row

if TYPE_CHECKING:
    from .runtime import Classifier, PlannedItem

DEFAULT_WINDOW = 512  # rows in flight: enough for a prompt's responses from several models
BAD_ROW_POLICIES = ("stop", "record")  # stop: a clear error naming the row; record: an error row
ORDERS = ("prefix", "file")  # within a window: by token ids (shared prefixes once), or as read


@dataclass
class BatchReport:
    """What a batch run did; `tokens_evaluated` counts what the engine ran (answer cues
    included), `tokens_input` the formatted inputs' tokens (what an engine without a cache
    across items would run, cues aside), `tokens_unique` the input tokens left once each
    window's shared prefixes are counted once."""

    rows: int = 0  # rows in the input read so far
    resumed: int = 0  # rows found done in the output
    classified: int = 0
    errors: int = 0  # error records written (on_bad_row="record")
    tokens_evaluated: int = 0
    tokens_input: int = 0
    tokens_unique: int = 0
    seconds: float = 0.0
    first_result_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        text = f"{self.rows} rows: {self.classified} classified now, {self.resumed} already done"
        if self.errors:
            text += f", {self.errors} error records"
        if self.tokens_input:
            text += (
                f"; tokens evaluated {self.tokens_evaluated:,} for {self.tokens_input:,} input tokens "
                f"({self.tokens_evaluated / self.tokens_input:.1%}; {self.tokens_unique:,} unique prefix tokens)"
            )
        return text + f"; {self.seconds:.1f} s"


def sort_key(ids: Sequence[int]) -> bytes:
    """Big-endian int32 bytes: they compare like the id sequences (ids are non-negative)."""
    return np.asarray(ids, dtype=">i4").tobytes()


def prefix_order(id_lists: Sequence[Sequence[int]]) -> list[int]:
    """Positions sorted by token ids (lexicographic): a depth-first walk of the prefix tree,
    so each shared prefix is evaluated once with a single-sequence KV cache."""
    keys = [sort_key(ids) for ids in id_lists]
    return sorted(range(len(keys)), key=keys.__getitem__)


def _common_bytes(a: bytes, b: bytes) -> int:
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:  # binary search with C-speed slice comparisons
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def unique_prefix_tokens(sorted_ids: Sequence[Sequence[int]]) -> int:
    """Nodes of the prefix tree of lexicographically sorted sequences."""
    total, previous = 0, b""
    for ids in sorted_ids:
        key = sort_key(ids)
        total += (len(key) - _common_bytes(previous, key) // 4 * 4) // 4
        previous = key
    return total


@dataclass
class WindowPlan:
    """A window's items planned by the classifier (`Classifier.plan_item`: tokenized once,
    windows for items longer than the context), and the order to run them in."""

    plans: list[PlannedItem | None]  # None where the classifier refused the item
    refused: dict[int, str]  # position -> why (too long with over_context="error", ...)
    order: list[int]  # positions to run
    tokens_unique: int  # nodes of the prefix tree of the window's accepted items


def plan_window(clf: Classifier, items: Sequence[Mapping[str, Any]], sort: bool = True) -> WindowPlan:
    plans: list[PlannedItem | None] = []
    refused: dict[int, str] = {}
    for position, item in enumerate(items):
        try:
            plans.append(clf.plan_item(item))
        except InvalidInputError as exc:
            plans.append(None)
            refused[position] = str(exc)
    good = [p for p, plan in enumerate(plans) if plan is not None]
    accepted = [plan.ids for plan in plans if plan is not None]  # the ids at `good`, in the same order
    order = prefix_order(accepted)
    by_prefix = [good[k] for k in order]
    return WindowPlan(plans, refused, by_prefix if sort else good, unique_prefix_tokens([accepted[k] for k in order]))


def classify_file(
    clf: Classifier,
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    window: int = DEFAULT_WINDOW,
    order: str = "prefix",
    on_bad_row: str = "stop",
    progress: Callable[[BatchReport], None] | None = None,
) -> BatchReport:
    """Classify every row of `input` into `output` with a loaded `Classifier`.

    Args:
        clf (`Classifier`): from `wildguard_lite.load`.
        input: .jsonl, .csv or .parquet with a `prompt` and optionally `response` and `id`.
        output: .jsonl or .parquet; resumable (a rerun skips the rows done and checks they
            were made from the same input).
        window (`int`): rows in flight (read ahead and reordered).
        order (`str`): "prefix" runs each window sorted by token ids, so shared prefixes stay
            in the engine's KV cache; "file" runs rows as read.
        on_bad_row (`str`): "stop" raises `InvalidInputError` naming the row (the rows before
            it are kept: fix it and rerun to resume); "record" writes an error record (`error`
            set, labels null) and goes on.
        progress (`callable`, *optional*): called with the report after each written row.

    Returns:
        `BatchReport`
    """
    check_options(window, order, on_bad_row)
    report = BatchReport()
    start = time.perf_counter()
    writer = ResumableWriter(output)
    rows = iter_rows(input)
    try:
        report.resumed = check_resumed(writer, rows, input)
        report.rows = report.resumed
        evaluated_before = clf.backend.tokens_evaluated
        stop_error: str | None = None
        file_error: str | None = None  # the rest of the file cannot be read (a quote never closed, ...)
        while stop_error is None and file_error is None:
            batch: list[InputRow] = []
            try:
                for row in rows:
                    report.rows += 1
                    if row.error is not None and on_bad_row == "stop":
                        stop_error = f"{row.where}: {row.error}"
                        break
                    batch.append(row)
                    if len(batch) == window:
                        break
            except InvalidInputError as exc:
                file_error = str(exc)  # the rows read before it still run, and are kept
            if not batch:
                break
            stop_error = (
                _run_window(clf, batch, writer, report, on_bad_row, order == "prefix", start, progress) or stop_error
            )
            report.tokens_evaluated = clf.backend.tokens_evaluated - evaluated_before
        report.seconds = time.perf_counter() - start
        error = stop_error if stop_error is not None else file_error
        if error is not None:
            kept = (
                f"; the {report.resumed + writer.written} rows before it are kept in {writer.partial}, fix the "
                "file and rerun to resume"
                if writer.written or report.resumed
                else ""
            )
            hint = " (or pass on_bad_row='record' / --on-bad-row record)" if stop_error is not None else ""
            raise InvalidInputError(error + kept + hint)
        writer.finish()
    finally:
        writer.close()
    return report


def check_options(window: int, order: str, on_bad_row: str) -> None:
    if window < 1:
        raise InvalidInputError(f"window must be at least 1, got {window}")
    if on_bad_row not in BAD_ROW_POLICIES:
        raise InvalidInputError(f"on_bad_row must be one of {', '.join(BAD_ROW_POLICIES)}, got '{on_bad_row}'")
    if order not in ORDERS:
        raise InvalidInputError(f"order must be one of {', '.join(ORDERS)}, got '{order}'")


def check_resumed(writer: ResumableWriter, rows: Iterator[InputRow], input: Any) -> int:
    """Read past the rows the output already has, checking each was made from this input."""
    done = 0
    for index, digest in writer.done_rows():
        row = next(rows, None)
        if row is None:
            raise WildGuardLiteError(f"{writer.output}: has more rows than {input}; choose another output or remove it")
        if digest is not None and (row.item is None or item_digest(row.item) != digest):
            raise WildGuardLiteError(
                f"{writer.output}: row {index} was made from a different input than {row.where}; "
                "choose another output or remove it"
            )
        done += 1
    return done


def _run_window(
    clf: Classifier,
    batch: list[InputRow],
    writer: ResumableWriter,
    report: BatchReport,
    on_bad_row: str,
    sort: bool,
    start: float,
    progress,
) -> str | None:
    """Classify one window and write its rows in input order; returns the first refusal
    (too long, ...) under on_bad_row="stop", after writing the rows before it."""
    good = [k for k, row in enumerate(batch) if row.item is not None]
    pending: dict[int, dict[str, Any]] = {k: result_row(row) for k, row in enumerate(batch) if row.item is None}
    refused: dict[int, str] = {}
    next_out = 0

    def flush() -> str | None:
        nonlocal next_out
        while next_out < len(batch):
            if next_out in refused and on_bad_row == "stop":
                return f"{batch[next_out].where}: {refused[next_out]}"
            if next_out not in pending:
                return None
            row = pending.pop(next_out)
            if row.get("error"):
                report.errors += 1
            else:
                report.classified += 1
            writer.write(row)
            if report.first_result_s is None:
                report.first_result_s = time.perf_counter() - start
            if progress is not None:
                progress(report)
            next_out += 1
        return None

    plan = plan_window(clf, [row.item for row in batch if row.item is not None], sort)
    report.tokens_unique += plan.tokens_unique
    for position, message in plan.refused.items():
        k = good[position]
        if on_bad_row == "stop":
            refused[k] = message
        else:
            pending[k] = result_row(batch[k], error=message)
    first_refused = min(refused, default=len(batch))
    for position in plan.order:
        k = good[position]
        if k > first_refused:
            continue  # not needed: the run stops at the refused row
        planned = plan.plans[position]
        assert planned is not None  # refused items are not in plan.order
        pending[k] = result_row(batch[k], clf.classify_planned([planned])[0])
        report.tokens_input += planned.tokens
        stop = flush()
        if stop is not None:
            return stop
    return flush()


def run_batch(
    input: str | os.PathLike,
    output: str | os.PathLike,
    model: str | os.PathLike,
    config: RuntimeConfig | None = None,
    *,
    window: int = DEFAULT_WINDOW,
    order: str = "prefix",
    on_bad_row: str = "stop",
    progress: Callable[[BatchReport], None] | None = None,
    **options: Any,
) -> BatchReport:
    """Load `model` with `config` (and `options`, RuntimeConfig's fields: `threads=8`, ...)
    and classify `input` into `output` on this machine (see `classify_file`).

    The same job on Ray actors is `wildguard_lite.ray_data.classify_file_on_ray` (the CLI picks
    it for `--ray`); it builds on this module, never the other way round.
    """
    check_options(window, order, on_bad_row)
    config = make_config(config, **options)
    from .loading import load

    # Refuse a bad input or output before the model loads (seconds at 7B).
    check_job(input, output)
    with load(model, config) as clf:
        return classify_file(clf, input, output, window=window, order=order, on_bad_row=on_bad_row, progress=progress)


def check_job(input: str | os.PathLike, output: str | os.PathLike) -> None:
    """Refuse a bad input or output before the model loads (seconds at 7B); creates nothing."""
    if Path(output).resolve() == Path(input).resolve():
        raise InvalidInputError("the output must not be the input file")
    check_input(input)
    ResumableWriter(output)
