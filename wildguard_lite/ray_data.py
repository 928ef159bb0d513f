"""Scale-out on Ray Data: classify a `ray.data.Dataset` with actors that load the model once.

    >>> import ray, ray.data
    >>> from wildguard_lite.ray_data import classify_dataset
    >>> ray.init(address="auto")
    >>> ds = ray.data.read_parquet("s3://bucket/exchanges/")  # columns prompt, response (optional)
    >>> out = classify_dataset(ds, "/shared/wildguard-q4_k_m.gguf", actors=8, threads_per_actor=4)
    >>> out.write_parquet("s3://bucket/verdicts/")

Each actor loads the model once (the path must be readable on every node) and classifies
batches of rows in prefix order (`wildguard_lite.batch`). A bad row (no prompt, not text, too
long for the context, an engine error on it) becomes a row with `error` set and null labels,
never a failed job. A dead actor (killed process, lost node) is restarted by Ray (`max_restarts`)
and its batch retried (`max_task_retries`); a batch that kills its actor more often than that
fails the job, and a file job run through `classify_file_on_ray` keeps every row written before.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from .batch import BatchReport, check_job, check_resumed, plan_window
from .contract import LABEL_KEYS, validate_item
from .errors import InvalidInputError, WildGuardLiteError, require
from .config import RuntimeConfig, make_config
from .defaults import available_cores, default_threads
from .io import check_encodable, item_digest, iter_rows
from .results import ResumableWriter

DEFAULT_BATCH_SIZE = 64  # rows per actor call: the window each actor reorders by prefix
DEFAULT_MAX_RESTARTS = -1  # restart a dead actor as often as needed (nodes come and go)
DEFAULT_MAX_TASK_RETRIES = 3  # a batch that kills its actor 4 times fails the job
READ_BLOCK_ROWS = 1024  # rows per block read from a batch file
RESULT_COLUMNS = (*LABEL_KEYS, "is_parsing_error", "scores", "windows", "error")


def _result_schema():
    pa = require("pyarrow", "ray")
    return [(key, pa.string()) for key in LABEL_KEYS] + [
        ("is_parsing_error", pa.bool_()),
        ("scores", pa.struct([(key, pa.float64()) for key in LABEL_KEYS])),
        ("windows", pa.int64()),  # set for an item longer than the context judged in windows
        ("error", pa.string()),
    ]


class WildGuardPredictor:
    """A Ray Data actor class: `ds.map_batches(WildGuardPredictor, fn_constructor_kwargs=...)`.

    Takes pyarrow batches with a `prompt` column and optionally `response` (and `error`: rows
    already known to be bad); returns them with the result columns added (`RESULT_COLUMNS`).
    """

    def __init__(self, model: str, config: RuntimeConfig | None = None):
        from .loading import load

        self.clf = load(model, config)

    def __call__(self, batch):
        pa = require("pyarrow", "ray")
        columns = batch.column_names
        prompts = batch.column("prompt").to_pylist() if "prompt" in columns else [None] * batch.num_rows
        responses = batch.column("response").to_pylist() if "response" in columns else [None] * batch.num_rows
        known = batch.column("error").to_pylist() if "error" in columns else [None] * batch.num_rows
        outcomes: list[dict[str, Any] | str | None] = list(known)
        items, positions = [], []
        for k, (prompt, response, error) in enumerate(zip(prompts, responses, known)):
            if error:
                continue
            item = {"prompt": prompt} if response in (None, "") else {"prompt": prompt, "response": response}
            try:
                validate_item(item)
                check_encodable(item)
            except InvalidInputError as exc:
                outcomes[k] = str(exc)
                continue
            items.append(item)
            positions.append(k)
        plan = plan_window(self.clf, items)
        for position, message in plan.refused.items():
            outcomes[positions[position]] = message
        for position in plan.order:
            planned = plan.plans[position]
            assert planned is not None  # refused items are not in plan.order
            try:
                outcomes[positions[position]] = self.clf.classify_planned([planned])[0]
            except Exception as exc:  # an engine failure on one row must not fail the job
                outcomes[positions[position]] = f"classification failed ({type(exc).__name__}: {exc})"
        return _with_results(pa, batch, outcomes)

    def __del__(self):
        clf = getattr(self, "clf", None)
        if clf is not None:
            clf.close()


def _with_results(pa, batch, outcomes):
    records = []
    for outcome in outcomes:
        if isinstance(outcome, dict):
            records.append(
                {
                    **{key: outcome.get(key) for key in LABEL_KEYS},
                    "is_parsing_error": bool(outcome.get("is_parsing_error")),
                    "scores": outcome.get("scores"),
                    "windows": outcome.get("windows"),
                    "error": None,
                }
            )
        else:
            records.append(
                {
                    **{key: None for key in LABEL_KEYS},
                    "is_parsing_error": False,
                    "scores": {key: None for key in LABEL_KEYS},
                    "windows": None,
                    "error": outcome or "no result",
                }
            )
    results = pa.Table.from_pylist(records, schema=pa.schema(_result_schema()))
    keep = [name for name in batch.column_names if name not in RESULT_COLUMNS]
    return pa.Table.from_arrays(
        [*(batch.column(n) for n in keep), *results.columns], names=[*keep, *results.column_names]
    )


def check_ray_options(actors: int, batch_size: int) -> None:
    for name, value in (("actors", actors), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{name} must be an integer of at least 1, got {value!r}")


def actor_threads(actors: int, threads: int | None) -> int:
    return threads if threads is not None else default_threads(share=actors)


def check_cpus(actors: int, threads: int, cpus: float, node_cpus: float, where: str, unit: str = "--actors") -> None:
    """Ray places an actor only where `threads` CPUs are free and waits, silently and for ever,
    for the actors it cannot place: refuse that up front, with numbers that fit (`unit`: the
    flag that counts the actors, e.g. serve's --replicas)."""
    if actors * threads <= cpus and threads <= node_cpus:
        return
    cpus, node_cpus = int(cpus), int(node_cpus)
    fit_actors = max(1, min(actors, cpus))
    fit_threads = max(1, min(node_cpus, cpus // fit_actors))
    raise InvalidInputError(
        f"{unit} {actors} x --threads {threads} needs {actors * threads} CPUs"
        + (f" ({threads} on one node)" if threads > node_cpus else "")
        + f", but {where} has {cpus} (at most {node_cpus} on one node); Ray would wait for ever for the rest. "
        f"Use {unit} {fit_actors} --threads {fit_threads}, or add nodes to the cluster"
    )


def map_batches_options(
    model: str | os.PathLike,
    config: RuntimeConfig | None = None,
    *,
    actors: int = 1,
    threads_per_actor: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_restarts: int = DEFAULT_MAX_RESTARTS,
    max_task_retries: int = DEFAULT_MAX_TASK_RETRIES,
    **options: Any,
) -> dict[str, Any]:
    """Keyword arguments for `Dataset.map_batches(WildGuardPredictor, **options)`: each actor
    loads `model` with `config` (and `options`, RuntimeConfig's fields), its threads
    `threads_per_actor` (else `config.threads`, else the cores shared by the actors)."""
    check_ray_options(actors, batch_size)
    if threads_per_actor is not None:
        options["threads"] = threads_per_actor
    config = make_config(config, **options)  # every runtime option checked here, before Ray starts
    ray_data = require("ray.data", "ray")
    threads = actor_threads(actors, config.threads)
    return {
        "fn_constructor_kwargs": {"model": str(model), "config": dataclasses.replace(config, threads=threads)},
        "batch_size": batch_size,
        "batch_format": "pyarrow",
        "compute": ray_data.ActorPoolStrategy(size=actors),
        "num_cpus": threads,  # Ray places actors by the cores their threads use
        # Passed as Ray remote args: Ray 2.60 has no named parameter for them (and warns that
        # remote args move to named ones by 2.64, hence the pin in the [ray] extra).
        "max_restarts": max_restarts,
        "max_task_retries": max_task_retries,
    }


def classify_dataset(ds, model: str | os.PathLike, config: RuntimeConfig | None = None, **options: Any):
    """The dataset with the result columns added, rows kept one for one (bad rows get `error`).

    Args:
        ds (`ray.data.Dataset`): a `prompt` column and optionally `response`.
        model: a converted model's path, readable on every node (shared storage).
        config (`RuntimeConfig`, *optional*): how each actor runs the model.
        **options: `actors`, `threads_per_actor`, `batch_size`, `max_restarts`,
            `max_task_retries`, and RuntimeConfig's fields (see `map_batches_options`).
    """
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(WildGuardPredictor, **map_batches_options(model, config, **options))


def _datasource(path: str, skip: int):
    """A Ray Datasource over a batch file read by `wildguard_lite.io`: the same parsing and
    messages as a local run, one streaming read task on the driver's node (the input file
    needs to be there only)."""
    pa = require("pyarrow", "ray")
    from ray.data import Datasource
    from ray.data.block import BlockMetadata
    from ray.data.datasource import ReadTask

    def read():
        chunk: list[dict[str, Any]] = []
        for row in iter_rows(path, skip=skip):
            item = row.item or {}
            chunk.append(
                {
                    "index": row.index,
                    "where": row.where,
                    "prompt": item.get("prompt"),
                    "response": item.get("response"),
                    "item_sha256": item_digest(item) if item else None,
                    "id_json": json.dumps(item["id"], ensure_ascii=False) if "id" in item else None,
                    "error": row.error,
                }
            )
            if len(chunk) == READ_BLOCK_ROWS:
                yield pa.Table.from_pylist(chunk)
                chunk = []
        if chunk:
            yield pa.Table.from_pylist(chunk)

    class BatchFileDatasource(Datasource):
        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            metadata = BlockMetadata(num_rows=None, size_bytes=None, input_files=[path], exec_stats=None)
            return [ReadTask(read, metadata)]

        @property
        def supports_distributed_reads(self) -> bool:
            return False

    return BatchFileDatasource()


def _start_ray(address: str):
    """'local' starts a Ray instance here on the cores this process may use; an address or
    'auto' joins a cluster. Returns whether this call started it (and so must shut it down)."""
    ray = require("ray", "ray")
    if ray.is_initialized():
        return False
    try:
        if address == "local":
            ray.init(num_cpus=available_cores(), include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise WildGuardLiteError(
            f"cannot reach Ray at '{address}' ({exc}); start the cluster with "
            "'ray start --head' or give its address (host:6379, ray://host:10001)"
        ) from None
    return True


def classify_file_on_ray(
    input: str | os.PathLike,
    output: str | os.PathLike,
    model: str | os.PathLike,
    config: RuntimeConfig | None = None,
    *,
    address: str = "local",
    actors: int = 1,
    batch_size: int | None = None,
    on_bad_row: str = "stop",
    progress: Callable[[BatchReport], None] | None = None,
    **options: Any,
) -> BatchReport:
    """`batch.classify_file` with the rows spread over Ray actors; same output and resume.
    Each actor loads `model` with `config` (and `options`, RuntimeConfig's fields); `threads`
    are each actor's.

    The input is read on this machine and streamed to the actors; results come back in input
    order and are written here. A bad row becomes an error record on the actor; with
    `on_bad_row="stop"` the job stops at the first one (the rows before it are kept).
    """
    ray = require("ray", "ray")
    config = make_config(config, **options)
    threads = config.threads
    job: dict[str, Any] = {
        "actors": actors,
        "batch_size": DEFAULT_BATCH_SIZE if batch_size is None else batch_size,
    }
    map_batches_options(model, config, **job)  # refuses bad options before any work
    if address == "local" and not ray.is_initialized():  # the local instance gets these cores
        check_cpus(actors, actor_threads(actors, threads), available_cores(), available_cores(), "this machine")
    check_job(input, output)
    if address == "local" and not Path(model).exists():
        raise InvalidInputError(f"{model}: no such model file")
    report = BatchReport()
    start = time.perf_counter()
    writer = ResumableWriter(output)
    started = False
    try:
        rows = iter_rows(input)
        report.resumed = report.rows = check_resumed(writer, rows, input)
        rows.close()
        started = _start_ray(address)
        nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
        check_cpus(
            actors,
            actor_threads(actors, threads),
            ray.cluster_resources().get("CPU", 0),
            max(nodes, default=0),
            f"the Ray cluster at '{address}'",
        )
        from ray.data import DataContext

        context = DataContext.get_current()
        context.execution_options.preserve_order = True  # results are written in input order
        context.enable_progress_bars = False
        # The read task takes no CPU from the actors: parsing rows is light next to a model.
        source = ray.data.read_datasource(_datasource(str(Path(input).resolve()), report.resumed), num_cpus=0)
        ds = classify_dataset(source, model, config, **job)
        stop_error = None
        try:
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                for row in batch.to_pylist():
                    report.rows += 1
                    if row["error"] and on_bad_row == "stop":
                        stop_error = f"{row['where']}: {row['error']}"
                        break
                    writer.write(_output_row(row))
                    if row["error"]:
                        report.errors += 1
                    else:
                        report.classified += 1
                    if report.first_result_s is None:
                        report.first_result_s = time.perf_counter() - start
                    if progress is not None:
                        progress(report)
                if stop_error:
                    break
        except ray.exceptions.RayError as exc:
            if isinstance(exc, InvalidInputError):  # the read task's own clear error (a damaged file)
                cause = getattr(exc, "cause", None)  # Ray appends its retry advice: keep our line only
                message = (str(cause) if isinstance(cause, InvalidInputError) else str(exc)).strip().splitlines()[0]
                raise InvalidInputError(
                    f"{message}; the {report.resumed + writer.written} rows before it are kept in {writer.partial}"
                ) from None
            raise WildGuardLiteError(
                f"the Ray job failed ({str(exc).splitlines()[0][:300]}); "
                f"the {report.resumed + writer.written} rows done are kept in {writer.partial}: "
                "rerun to resume"
            ) from None
        report.seconds = time.perf_counter() - start
        if stop_error:
            kept = (
                (
                    f"; the {report.resumed + writer.written} rows before it are kept in {writer.partial}, "
                    "fix the row and rerun to resume"
                )
                if writer.written or report.resumed
                else ""
            )
            raise InvalidInputError(stop_error + kept + " (--on-bad-row record writes it as an error record)")
        writer.finish()
    finally:
        writer.close()
        if started:
            ray.shutdown()
    return report


def _output_row(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"index": row["index"], "item_sha256": row["item_sha256"]}
    if row.get("id_json") is not None:
        out["id"] = json.loads(row["id_json"])
    out.update({key: row[key] for key in LABEL_KEYS})
    out["is_parsing_error"] = row["is_parsing_error"]
    out["scores"] = row["scores"]
    if row.get("windows") is not None:
        out["windows"] = row["windows"]
    if row["error"]:
        out["error"] = f"{row['where']}: {row['error']}"
    return out
