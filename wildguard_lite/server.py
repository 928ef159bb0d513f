"""`wildguard-lite serve`: a moderation HTTP API (OpenAI-compatible and native) on a worker pool.

Import this module only when serving: it pulls fastapi. Layout:
- `ServeSettings`: every knob, validated once.
- `WorkerPool`: N threads, each owning one Classifier (its own llama.cpp context; llama.cpp
  releases the GIL while it computes), a bounded admission count (429 beyond it) and a
  per-request timeout.
- `create_app(settings)`: the FastAPI app; models load in its lifespan, and shutdown lets the
  requests in flight finish before the workers stop.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at run time.
import asyncio
import hmac
import json
import logging
import math
import os
import queue
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .contract import validate_item
from .errors import InputTooLongError, InvalidInputError, require
from .runtime import MODES, Classifier

log = logging.getLogger("wildguard_lite.server")

# OpenAI moderation categories -> (WildGuard label key, the label value that sets it).
CATEGORY_MAP = {
    "harmful_request": ("prompt_harmfulness", "harmful"),
    "harmful_response": ("response_harmfulness", "harmful"),
    "refusal": ("response_refusal", "refusal"),
}
# A refusal is not a reason to block: only these categories set `flagged`.
FLAGGING_CATEGORIES = ("harmful_request", "harmful_response")

ENDPOINTS = ("/v1/moderations", "/v1/classify", "/health", "/metrics")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ServeSettings:
    """Everything `serve` needs; `threads` is per worker (default: the cores divided among them)."""

    model: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    max_queue: int = 16
    threads: int | None = None
    n_ctx: int = 4096
    mode: str = "score"
    request_timeout_s: float = 60.0
    max_body_bytes: int = 1 << 20
    max_items: int = 64
    prefix_cache_mb: float = 256.0
    api_key: str | None = field(default=None, repr=False)
    thresholds: dict[str, float] | None = field(default=None, hash=False)  # {label: P(yes)}; None: argmax

    def __post_init__(self):
        checks = [
            (self.workers >= 1, f"--workers must be at least 1, got {self.workers}"),
            (self.max_queue >= 0, f"--max-queue must be 0 or more, got {self.max_queue}"),
            (self.threads is None or self.threads >= 1, f"--threads must be at least 1, got {self.threads}"),
            (0 <= self.port <= 65535, f"--port must be 0-65535 (0: any free port), got {self.port}"),
            (self.request_timeout_s > 0, f"--timeout must be positive, got {self.request_timeout_s}"),
            (self.max_body_bytes >= 1024, f"--max-body-bytes must be at least 1024, got {self.max_body_bytes}"),
            (self.max_items >= 1, f"--max-items must be at least 1, got {self.max_items}"),
            (self.prefix_cache_mb >= 0, f"--prefix-cache-mb must be 0 or more, got {self.prefix_cache_mb}"),
            (self.mode in MODES, f"--mode must be one of {', '.join(MODES)}, got '{self.mode}'"),
            (self.api_key is None or len(self.api_key) >= 16,
             "the API key must be at least 16 characters (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidInputError(message)

    @property
    def threads_per_worker(self) -> int:
        return self.threads or max(1, available_cores() // self.workers)

    @property
    def model_name(self) -> str:
        return self.model.stem if self.model is not None else "wildguard"


def read_api_key(path: str | os.PathLike) -> str:
    """The key in a file (first line, stripped), so it never appears in the process list."""
    try:
        key = Path(path).read_text(encoding="utf-8").strip().splitlines()
    except OSError as exc:
        raise InvalidInputError(f"--api-key-file {path}: cannot read it ({exc.strerror})") from None
    if not key or not key[0].strip():
        raise InvalidInputError(f"--api-key-file {path}: the file is empty; put the key on its first line")
    return key[0].strip()


# -- errors -------------------------------------------------------------------------------------
class APIError(Exception):
    """An error answer: status, one-line message, OpenAI-style error type and extra fields."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "code": self.status, **self.extra}}


# -- metrics ------------------------------------------------------------------------------------
class Metrics:
    """Counters and latency histograms in Prometheus text format (no extra dependency)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.errors: dict[str, int] = {}
        self.latency: dict[str, list[int]] = {}  # endpoint -> bucket counts (+Inf last)
        self.latency_sum: dict[str, float] = {}
        self.items = 0

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1
            buckets = self.latency.setdefault(endpoint, [0] * (len(LATENCY_BUCKETS) + 1))
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            buckets[-1] += 1
            self.latency_sum[endpoint] = self.latency_sum.get(endpoint, 0.0) + seconds

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def render(self, pool: "WorkerPool | None") -> str:
        out = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]):
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(f"{name}{labels} {value:g}" for labels, value in samples)

        with self._lock:
            metric("wildguard_requests_total", "counter", "HTTP requests by endpoint and status.",
                   [(f'{{endpoint="{e}",status="{s}"}}', n) for (e, s), n in sorted(self.requests.items())])
            metric("wildguard_errors_total", "counter", "Error answers by type.",
                   [(f'{{type="{k}"}}', n) for k, n in sorted(self.errors.items())])
            hist = []
            for endpoint, buckets in sorted(self.latency.items()):
                for bound, n in zip([*map(str, LATENCY_BUCKETS), "+Inf"], buckets):
                    hist.append((f'_bucket{{endpoint="{endpoint}",le="{bound}"}}', n))
                hist.append((f'_sum{{endpoint="{endpoint}"}}', self.latency_sum[endpoint]))
                hist.append((f'_count{{endpoint="{endpoint}"}}', buckets[-1]))
            out.append("# HELP wildguard_request_duration_seconds Request latency, queueing included.")
            out.append("# TYPE wildguard_request_duration_seconds histogram")
            out.extend(f"wildguard_request_duration_seconds{labels} {value:g}" for labels, value in hist)
        if pool is not None:
            metric("wildguard_queue_depth", "gauge", "Requests admitted and waiting for a worker.", [("", pool.queued)])
            metric("wildguard_in_flight", "gauge", "Requests being classified now.", [("", pool.running)])
            metric("wildguard_workers", "gauge", "Model workers.", [("", pool.size)])
            metric("wildguard_items_total", "counter", "Exchanges classified.", [("", pool.items_done)])
            metric("wildguard_tokens_evaluated_total", "counter", "Tokens the model evaluated.",
                   [("", pool.tokens_evaluated())])
            cache = pool.prefix_cache
            if cache is not None:
                stats = cache.stats
                metric("wildguard_prefix_cache_hits_total", "counter", "New sequences restored from the prefix cache.",
                       [("", stats.hits)])
                metric("wildguard_prefix_cache_misses_total", "counter", "New sequences with no useful cached prefix.",
                       [("", stats.misses)])
                metric("wildguard_prefix_cache_tokens_reused_total", "counter", "Tokens restored instead of evaluated.",
                       [("", stats.tokens_reused)])
                metric("wildguard_prefix_cache_bytes", "gauge", "Bytes of KV state held.", [("", cache.bytes)])
        return "\n".join(out) + "\n"


class _MetricsMiddleware:
    """Pure ASGI: times every HTTP request and records its status (404s and 413s included)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
            self.metrics.observe(endpoint, status[0], time.perf_counter() - start)


# -- worker pool --------------------------------------------------------------------------------
@dataclass
class _Job:
    items: list[dict[str, Any]]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    abandoned: bool = False  # the request timed out: skip it if still queued


ClassifierFactory = Callable[[int, int], Classifier]  # (worker index, threads) -> Classifier


class WorkerPool:
    """N model workers behind one FIFO; admits at most `size + max_queue` requests at a time."""

    def __init__(self, classifiers: list[Classifier], max_queue: int, prefix_cache=None):
        self.classifiers = classifiers
        self.size = len(classifiers)
        self.capacity = self.size + max_queue
        self.prefix_cache = prefix_cache
        self.queued = 0
        self.running = 0
        self.items_done = 0
        self._job_seconds = 1.0  # moving average, for Retry-After
        self._lock = threading.Lock()
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._threads = [threading.Thread(target=self._work, args=(clf,), name=f"wildguard-worker-{i}", daemon=True)
                         for i, clf in enumerate(classifiers)]
        for thread in self._threads:
            thread.start()

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the backlog's expected work per worker."""
        with self._lock:
            backlog = self.queued + self.running
        return max(1, min(60, math.ceil(self._job_seconds * backlog / self.size)))

    def try_submit(self, items: list[dict[str, Any]]) -> _Job | None:
        """Queue a request, or None when the pool and queue are full (the caller answers 429)."""
        with self._lock:
            if self.queued + self.running >= self.capacity:
                return None
            self.queued += 1
        loop = asyncio.get_running_loop()
        job = _Job(items, loop.create_future(), loop)
        self._jobs.put(job)
        return job

    def tokens_evaluated(self) -> int:
        return sum(getattr(c.backend, "tokens_evaluated", 0) for c in self.classifiers)

    def _work(self, clf: Classifier) -> None:
        while True:
            job = self._jobs.get()
            if job is None:  # shutdown sentinel, queued after every admitted job
                return
            with self._lock:
                self.queued -= 1
                if job.abandoned:
                    continue
                self.running += 1
            start = time.perf_counter()
            try:
                outcome: tuple[bool, Any] = (True, clf.classify(job.items))
            except BaseException as exc:  # handed to the request; the worker lives on
                outcome = (False, exc)
            seconds = time.perf_counter() - start
            with self._lock:
                self.running -= 1
                self.items_done += len(job.items) if outcome[0] else 0
                self._job_seconds = 0.8 * self._job_seconds + 0.2 * seconds
            job.loop.call_soon_threadsafe(_settle, job.future, outcome)

    def close(self) -> None:
        """Finish every admitted job, then stop the workers and free the models."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()
        for clf in self.classifiers:
            clf.close()


def _settle(future: asyncio.Future, outcome: tuple[bool, Any]) -> None:
    if future.done():  # timed out meanwhile
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def make_prefix_cache(settings: ServeSettings):
    """The LRU of KV states shared by the workers, or None when disabled."""
    if settings.prefix_cache_mb <= 0:
        return None
    from .backends.llama import PrefixStateCache

    return PrefixStateCache(int(settings.prefix_cache_mb * (1 << 20)))


def default_factory(settings: ServeSettings, prefix_cache) -> ClassifierFactory:
    def make(index: int, threads: int) -> Classifier:
        from .runtime import load

        clf = load(settings.model, mode=settings.mode, threads=threads, n_ctx=settings.n_ctx,
                   thresholds=settings.thresholds)
        if prefix_cache is not None and hasattr(clf.backend, "prefix_cache"):  # llama.cpp only
            clf.backend.prefix_cache = prefix_cache
        return clf

    return make


# -- request parsing ----------------------------------------------------------------------------
async def read_json(request, limit: int) -> Any:
    """The body as JSON, refusing more than `limit` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body is {declared} bytes; the limit is {limit} "
                            "(split the input into several requests)", "request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"request body exceeds the limit of {limit} bytes "
                                "(split the input into several requests)", "request_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise APIError(400, "request body is empty; send a JSON object", "invalid_json")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise APIError(400, "request body is not UTF-8 text; send UTF-8 JSON", "invalid_json") from None
    except json.JSONDecodeError as exc:
        raise APIError(400, f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                       "invalid_json") from None


def _check_count(n: int, field_name: str, settings: ServeSettings) -> None:
    if n == 0:
        raise APIError(422, f"'{field_name}' is empty; give at least one item", param=field_name)
    if n > settings.max_items:
        raise APIError(413, f"'{field_name}' has {n} items; the limit is {settings.max_items} per request "
                            "(split it, or start serve with a larger --max-items)", "request_too_large",
                       param=field_name)


def parse_moderation(body: Any, settings: ServeSettings) -> tuple[list[dict[str, Any]], bool]:
    """OpenAI's `input` (a string or a list of strings: each a user prompt) plus our extension:
    objects `{"prompt": ..., "response": ...}` to judge an assistant response."""
    if not isinstance(body, dict):
        raise APIError(422, f"request body must be a JSON object with 'input', got {type(body).__name__}")
    if "input" not in body:
        raise APIError(422, "missing required field 'input' (a string, a list of strings, or objects "
                            "{\"prompt\": ..., \"response\": ...})", param="input")
    raw = body["input"]
    single = not isinstance(raw, list)
    entries = [raw] if single else raw
    _check_count(len(entries), "input", settings)
    items = []
    for i, entry in enumerate(entries):
        where = "input" if single else f"input[{i}]"
        if isinstance(entry, str):
            items.append({"prompt": entry})
        elif isinstance(entry, dict):
            unknown = sorted(set(entry) - {"prompt", "response"})
            if unknown:
                raise APIError(422, f"{where}: unknown field(s) {', '.join(unknown)}; allowed: prompt, response",
                               param=where)
            items.append(_validated(entry, where))
        else:
            raise APIError(422, f"{where}: must be a string or an object {{\"prompt\": ..., \"response\": ...}}, "
                                f"got {type(entry).__name__} (images are not supported)", param=where)
    return items, single


def parse_classify(body: Any, settings: ServeSettings) -> list[dict[str, Any]]:
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        got = type(body.get("items")).__name__ if isinstance(body, dict) and "items" in body else "no 'items'"
        raise APIError(422, "request body must be {\"items\": [{\"prompt\": ..., \"response\": ...}, ...]}, "
                            f"got {got if isinstance(body, dict) else type(body).__name__}", param="items")
    _check_count(len(body["items"]), "items", settings)
    return [_validated(item, f"items[{i}]") for i, item in enumerate(body["items"])]


def _validated(entry: Any, where: str) -> dict[str, Any]:
    try:
        prompt, response = validate_item(entry)
    except InvalidInputError as exc:
        raise APIError(422, f"{where}: {exc}", param=where) from None
    return {"prompt": prompt} if response is None else {"prompt": prompt, "response": response}


def to_moderation(result: dict[str, Any]) -> dict[str, Any]:
    """One WildGuard result as an OpenAI moderation result; labels not asked (n/a) are false/0."""
    scores = result.get("scores") or {}
    categories, category_scores = {}, {}
    for name, (key, value) in CATEGORY_MAP.items():
        categories[name] = result.get(key) == value
        category_scores[name] = float(scores.get(key) or 0.0)
    return {
        "flagged": any(categories[name] for name in FLAGGING_CATEGORIES),
        "categories": categories,
        "category_scores": category_scores,
        "wildguard": result,
    }


# -- the app ------------------------------------------------------------------------------------
def create_app(settings: ServeSettings, classifier_factory: ClassifierFactory | None = None, prefix_cache=None):
    """The ASGI app. Models load when the app starts (lifespan), one per worker.

    `classifier_factory(worker_index, threads)` makes each worker's Classifier (default: load
    `settings.model` and share one prefix cache, made here unless `prefix_cache` is given).
    """
    fastapi = require("fastapi", "serve")
    from fastapi import Request
    from fastapi.responses import JSONResponse, PlainTextResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    metrics = Metrics()
    state: dict[str, Any] = {"pool": None}

    @asynccontextmanager
    async def lifespan(app):
        cache = prefix_cache
        if classifier_factory is None and cache is None:
            cache = make_prefix_cache(settings)
        factory = classifier_factory or default_factory(settings, cache)
        threads = settings.threads_per_worker
        # Loading is blocking work: keep the loop free (and load workers one after another,
        # so peak memory during load stays that of one model file being opened).
        classifiers = []
        try:
            for i in range(settings.workers):
                classifiers.append(await asyncio.to_thread(factory, i, threads))
        except BaseException:
            for clf in classifiers:
                clf.close()
            raise
        state["pool"] = WorkerPool(classifiers, settings.max_queue, cache)
        log.info("wildguard-lite serve: %d worker(s) x %d thread(s), queue %d, model %s",
                 settings.workers, threads, settings.max_queue, settings.model_name)
        try:
            yield
        finally:
            pool, state["pool"] = state["pool"], None
            await asyncio.to_thread(pool.close)

    app = fastapi.FastAPI(title="wildguard-lite", lifespan=lifespan, docs_url=None, redoc_url=None,
                          openapi_url=None)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)

    def error_response(exc: APIError):
        metrics.error(exc.kind)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(APIError)
    async def on_api_error(request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request, exc):
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        message = {404: f"no endpoint {request.url.path}; see {', '.join(ENDPOINTS)}",
                   405: f"method {request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return error_response(APIError(exc.status_code, message, kind))

    @app.exception_handler(Exception)
    async def on_unexpected(request, exc):
        log.exception("internal error on %s", request.url.path)
        return error_response(APIError(500, "internal server error (logged on the server)", "server_error"))

    def authorize(request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           "authentication_error", headers={"WWW-Authenticate": "Bearer"})

    async def run_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        pool: WorkerPool | None = state["pool"]
        if pool is None:
            raise APIError(503, "the server is starting or shutting down; retry shortly", "unavailable",
                           headers={"Retry-After": "1"})
        job = pool.try_submit(items)
        if job is None:
            seconds = pool.retry_after()
            raise APIError(429, f"all {pool.size} worker(s) busy and the queue ({settings.max_queue}) is full; "
                                f"retry after {seconds} s", "rate_limit_exceeded",
                           headers={"Retry-After": str(seconds)})
        try:
            return await asyncio.wait_for(job.future, settings.request_timeout_s)
        except asyncio.TimeoutError:
            job.abandoned = True
            raise APIError(504, f"classification did not finish within {settings.request_timeout_s:g} s "
                                "(queue wait included); retry later, send fewer or shorter items, or start "
                                "serve with a larger --timeout", "timeout") from None
        except InputTooLongError as exc:
            raise APIError(413, str(exc), "input_too_long", n_tokens=exc.n_tokens, limit=exc.limit) from None
        except InvalidInputError as exc:
            raise APIError(422, str(exc)) from None

    @app.post("/v1/moderations")
    async def moderations(request: Request):
        authorize(request)
        items, _ = parse_moderation(await read_json(request, settings.max_body_bytes), settings)
        results = await run_items(items)
        return {"id": f"modr-{uuid.uuid4().hex}", "model": settings.model_name,
                "results": [to_moderation(r) for r in results]}

    @app.post("/v1/classify")
    async def classify(request: Request):
        authorize(request)
        items = parse_classify(await read_json(request, settings.max_body_bytes), settings)
        return {"model": settings.model_name, "results": await run_items(items)}

    @app.get("/health")
    async def health():
        pool: WorkerPool | None = state["pool"]
        if pool is None:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return {"status": "ok", "model": settings.model_name, "workers": pool.size,
                "queue_depth": pool.queued, "in_flight": pool.running}

    @app.get("/metrics")
    async def prometheus(request: Request):
        authorize(request)
        return PlainTextResponse(metrics.render(state["pool"]), media_type="text/plain; version=0.0.4")

    app.state.settings = settings
    app.state.metrics = metrics
    app.state.runtime = state
    return app


def serve(settings: ServeSettings) -> None:
    """Run the app with uvicorn until SIGINT/SIGTERM; requests in flight are finished first."""
    uvicorn = require("uvicorn", "serve")
    require("fastapi", "serve")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    # Load before starting, so a bad model file is one clear error, not a startup traceback.
    cache = make_prefix_cache(settings)
    factory = default_factory(settings, cache)
    loaded: list[Classifier] = []
    try:
        for i in range(settings.workers):
            loaded.append(factory(i, settings.threads_per_worker))
    except BaseException:
        for clf in loaded:
            clf.close()
        raise
    config = uvicorn.Config(
        create_app(settings, lambda i, threads: loaded[i], cache), host=settings.host, port=settings.port,
        log_level="info",
        # Let a request admitted just before SIGTERM finish, however long it queued.
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
        limit_concurrency=None, server_header=False, access_log=False,
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind
        server.started = False
    if not server.started:
        for clf in loaded:
            clf.close()
        raise InvalidInputError(f"could not listen on {settings.host}:{settings.port} (in use, or not an address "
                                "of this machine; see the log above); pick another --host/--port")

