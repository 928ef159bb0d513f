"""The FastAPI app and `serve()`.

The model loads in the app's lifespan, once, and the workers share it (the only loading path);
shutdown lets the requests in flight finish before the workers stop.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at run time.
import asyncio
import errno
import logging
import socket
import uuid
from contextlib import asynccontextmanager
from typing import Any

from ..defaults import lower_priority
from ..errors import InvalidInputError, WildGuardLiteError, require
from .budget import calibrate, judge
from .memory import tame_allocator
from .errors import APIError
from .guardrail import BODY_COPIES, GUARDRAIL_PATH, Guardrail, prompt_tail
from .metrics import ENDPOINTS, Metrics, MetricsMiddleware
from .moderation import parse_moderation, to_moderation
from .parsing import authorize, parse_classify, read_json
from .pool import ClassifierFactory, WorkerPool, default_factory, make_prefix_cache
from .openapi import classify_operation, guardrail_operation, moderation_operation, plain_operation
from .settings import ServeSettings
from .. import __version__

log = logging.getLogger("wildguard_lite.server")


class StartupErrors:
    """Pure ASGI: a user error while loading the models (a bad model file) is reported as its
    one-line message instead of a traceback, and kept for `serve()` to raise."""

    def __init__(self, app, state: dict):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)

        async def send_clean(message):
            error = self.state.get("startup_error")
            if message["type"] == "lifespan.startup.failed" and error is not None:
                message = {**message, "message": f"could not start: {error}"}
            await send(message)

        return await self.app(scope, receive, send_clean)


def make_lifespan(
    settings: ServeSettings, state: dict, classifier_factory, prefix_cache, tokens_per_second, pool_class
):
    """The app's lifespan: load the model once (off the event loop), measure its rate, start the
    pool in `state["pool"]`; at shutdown close the pool after the requests in flight."""

    @asynccontextmanager
    async def lifespan(app):
        cache = prefix_cache
        if classifier_factory is None and cache is None:
            cache = make_prefix_cache(settings)
        factory = classifier_factory or default_factory(settings, cache)
        threads = settings.engine_threads
        # Loading is blocking work: keep the loop free.
        try:
            classifier = await asyncio.to_thread(factory, 0, threads)
            seed, seed_seconds = tokens_per_second, 1.0
            if seed is None and classifier_factory is None:
                seed, seed_seconds = await asyncio.to_thread(calibrate, classifier)
        except WildGuardLiteError as exc:
            state["startup_error"] = exc
            raise
        limits = (settings.client_max_requests, settings.client_max_tokens)
        state["pool"] = pool_class(classifier, settings.workers, settings.max_queue, cache, seed, limits, seed_seconds)
        log.info(
            "wildguard-lite serve: %d worker(s) sharing one model (%d engine threads), queue %d, model %s, %s tokens/s",
            settings.workers,
            threads,
            settings.max_queue,
            settings.model_name,
            "unmeasured" if seed is None else f"{seed:.0f}",
        )
        try:
            yield
        finally:
            pool, state["pool"] = state["pool"], None
            await asyncio.to_thread(pool.close)

    return lifespan


def add_error_handlers(app, metrics: Metrics) -> None:
    """Every error as the API's JSON error body (its status, kind and fix), counted in /metrics;
    an unexpected one logged with its traceback and answered 500 without it."""
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    def error_response(exc: APIError):
        metrics.error(exc.kind)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(APIError)
    async def on_api_error(request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request, exc):
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        message = {
            404: f"no endpoint {request.url.path}; see {', '.join(ENDPOINTS)}",
            405: f"method {request.method} is not allowed on {request.url.path}",
        }.get(exc.status_code, str(exc.detail))
        # Starlette's 405 carries the route's methods in `Allow` (RFC 9110 requires it): keep it.
        return error_response(APIError(exc.status_code, message, kind, headers=dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def on_unexpected(request, exc):
        log.exception("internal error on %s", request.url.path)
        return error_response(APIError(500, "internal server error (logged on the server)", "server_error"))


def create_app(
    settings: ServeSettings,
    classifier_factory: ClassifierFactory | None = None,
    prefix_cache=None,
    tokens_per_second: float | None = None,
    pool_class=WorkerPool,
):
    """The ASGI app. The model loads when the app starts (lifespan), once: the workers are
    threads sharing it (with llama.cpp their calls run batched, each on its own KV sequence).

    `classifier_factory(worker_index, threads)` makes the Classifier (called once, index 0;
    default: load `settings.model` with a prefix cache made here unless `prefix_cache` is given).
    `tokens_per_second` seeds the engine's measured rate (server/budget.py); default: one short
    call at start-up measures it when the model is loaded here, and a given factory's engine is
    measured by its first requests.
    `pool_class` runs the workers (a fleet's sends each job to a replica: server/fleet.py).
    """
    fastapi = require("fastapi", "serve")
    from fastapi import Request
    from fastapi.responses import JSONResponse, PlainTextResponse

    metrics = Metrics()
    state: dict[str, Any] = {"pool": None, "startup_error": None}

    def turn_tail(text: str) -> str:
        pool: WorkerPool | None = state["pool"]
        if pool is None:
            return text
        classifier = pool.classifier
        return prompt_tail(text, classifier.tokenizer, classifier.backend.n_ctx)

    guardrail = Guardrail(settings, turn_tail)
    lifespan = make_lifespan(settings, state, classifier_factory, prefix_cache, tokens_per_second, pool_class)

    # /openapi.json: the schema users and API fuzzers read (no docs pages: they load scripts from a CDN).
    app = fastapi.FastAPI(
        title="wildguard-lite",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(StartupErrors, state=state)
    add_error_handlers(app, metrics)

    async def run_items(request, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        pool: WorkerPool | None = state["pool"]
        if pool is None:
            raise APIError(
                503,
                "the server is starting or shutting down; retry shortly",
                "unavailable",
                headers={"Retry-After": "1"},
            )
        return await judge(request, items, pool, settings)

    @app.post("/v1/moderations", openapi_extra=moderation_operation(settings))
    async def moderations(request: Request):
        authorize(request, settings)
        items = parse_moderation(await read_json(request, settings), settings)
        results = await run_items(request, items)
        return {
            "id": f"modr-{uuid.uuid4().hex}",
            "model": settings.model_name,
            "results": [to_moderation(r, settings.openai_categories) for r in results],
        }

    @app.post("/v1/classify", openapi_extra=classify_operation(settings))
    async def classify(request: Request):
        authorize(request, settings)
        items = parse_classify(await read_json(request, settings), settings)
        return {"model": settings.model_name, "results": await run_items(request, items)}

    @app.post(GUARDRAIL_PATH, openapi_extra=guardrail_operation(settings))
    async def litellm_guardrail(request: Request):
        authorize(request, settings)
        # LiteLLM sends a chat twice (texts and structured_messages): room for both copies.
        body = await read_json(request, settings, copies=BODY_COPIES)
        return await guardrail.handle(body, lambda items: run_items(request, items))

    @app.get("/health", openapi_extra=plain_operation("health"))
    async def health():
        pool: WorkerPool | None = state["pool"]
        if pool is None:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return {
            "status": "ok",
            "model": settings.model_name,
            "workers": pool.size,
            "queue_depth": pool.queued,
            "in_flight": pool.running,
        }

    @app.get("/metrics", openapi_extra=plain_operation("metrics", settings))
    async def prometheus(request: Request):
        authorize(request, settings)
        return PlainTextResponse(metrics.render(state["pool"]), media_type="text/plain; version=0.0.4")

    app.state.settings = settings
    app.state.metrics = metrics
    app.state.prompt_memory = guardrail.memory
    app.state.guardrail = guardrail
    app.state.runtime = state
    return app


def uvicorn_config(app, settings: ServeSettings, **overrides):
    """How serve() runs the app (tests run the same with their own host, port and logging)."""
    uvicorn = require("uvicorn", "serve")
    from .protocol import head_timeout_protocol

    options = dict(
        host=settings.host,
        port=settings.port,
        log_level="info",
        # Let a request admitted just before SIGTERM finish, however long it queued.
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
        limit_concurrency=None,
        server_header=False,
        access_log=False,
        http=head_timeout_protocol(settings.header_timeout_s),
    )
    return uvicorn.Config(app, **{**options, **overrides})


def check_address(host: str, port: int) -> None:
    """Bind (host, port) once, as uvicorn will, to say why it cannot be listened on: uvicorn
    only logs the OS error and exits."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind((host, port))
        except socket.gaierror as exc:
            raise InvalidInputError(f"--host {host}: not an address or a known host name ({exc.strerror})") from None
        except OSError as exc:
            reason = {
                errno.EADDRINUSE: "the port is in use (another server?); pick another --port or stop the other",
                errno.EADDRNOTAVAIL: "not an address of this machine; use 127.0.0.1, 0.0.0.0 or one of its addresses",
                errno.EACCES: "permission denied (ports below 1024 need privileges); pick a port from 1024",
            }.get(exc.errno or 0, exc.strerror or str(exc))
            raise InvalidInputError(f"could not listen on {host}:{port}: {reason}") from None


def serve(settings: ServeSettings, app=None) -> None:
    """Run the app with uvicorn until SIGINT/SIGTERM; requests in flight are finished first.
    A model that cannot load, or an address that cannot be listened on, is raised as its
    one-line error."""
    uvicorn = require("uvicorn", "serve")
    tame_allocator()  # before any thread starts: each would keep its own heap (server/memory.py)
    check_address(settings.host, settings.port)  # before the model loads (seconds at 7B)
    lower_priority(settings.nice)  # before any thread starts: the engine's threads inherit it
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    app = create_app(settings) if app is None else app  # a fleet's front brings its own (server/fleet.py)
    server = uvicorn.Server(uvicorn_config(app, settings))
    try:
        server.run()
    except SystemExit:  # uvicorn exits when start-up fails (after logging why)
        server.started = False
    error = app.state.runtime["startup_error"]
    if error is not None:
        raise error
    if not server.started:
        if server.should_exit:  # SIGINT/SIGTERM while the model loaded
            raise KeyboardInterrupt
        check_address(settings.host, settings.port)  # taken while the model loaded?
        raise WildGuardLiteError("serve could not start: an unexpected error (see the log above)")
