"""Prometheus metrics (text format, no extra dependency) and the ASGI middleware that times
every HTTP request and records its status."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from .pool import ABORT_REASONS

if TYPE_CHECKING:
    from .pool import WorkerPool

ENDPOINTS = ("/v1/moderations", "/v1/classify", "/beta/litellm_basic_guardrail_api", "/health", "/metrics")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# nginx's code for "the client closed the connection before the answer": never sent, only counted.
CLIENT_CLOSED = 499


def number(value: float) -> str:
    """A sample's value as Prometheus reads it: an integer exactly (a counter past a million
    keeps every digit), a float with all its digits (repr: shortest exact form)."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class Metrics:
    """Counters and latency histograms."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.errors: dict[str, int] = {}
        self.latency: dict[str, list[int]] = {}  # endpoint -> bucket counts (+Inf last)
        self.latency_sum: dict[str, float] = {}

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
            out.extend(f"{name}{labels} {number(value)}" for labels, value in samples)

        with self._lock:
            metric(
                "wildguard_requests_total",
                "counter",
                f"HTTP requests by endpoint and status ({CLIENT_CLOSED}: the client left before the answer).",
                [(f'{{endpoint="{e}",status="{s}"}}', n) for (e, s), n in sorted(self.requests.items())],
            )
            metric(
                "wildguard_errors_total",
                "counter",
                "Error answers by type.",
                [(f'{{type="{k}"}}', n) for k, n in sorted(self.errors.items())],
            )
            hist: list[tuple[str, float]] = []
            for endpoint, buckets in sorted(self.latency.items()):
                for bound, n in zip([*map(str, LATENCY_BUCKETS), "+Inf"], buckets):
                    hist.append((f'_bucket{{endpoint="{endpoint}",le="{bound}"}}', n))
                hist.append((f'_sum{{endpoint="{endpoint}"}}', self.latency_sum[endpoint]))
                hist.append((f'_count{{endpoint="{endpoint}"}}', buckets[-1]))
            out.append("# HELP wildguard_request_duration_seconds Request latency, queueing included.")
            out.append("# TYPE wildguard_request_duration_seconds histogram")
            out.extend(f"wildguard_request_duration_seconds{labels} {number(value)}" for labels, value in hist)
        if pool is not None:
            metric("wildguard_queue_depth", "gauge", "Requests admitted and waiting for a worker.", [("", pool.queued)])
            metric("wildguard_in_flight", "gauge", "Requests being classified now.", [("", pool.running)])
            metric("wildguard_workers", "gauge", "Model workers.", [("", pool.size)])
            metric("wildguard_items_total", "counter", "Exchanges classified.", [("", pool.items_done)])
            metric(
                "wildguard_parsing_errors_total",
                "counter",
                "Exchanges whose verdict could not be read (answered as flagged/blocked).",
                [("", pool.parsing_errors)],
            )
            metric(
                "wildguard_not_judged_total",
                "counter",
                "Exchanges answered fail-closed without a verdict because they could not be judged within "
                "--timeout, by reason (too_long, queue_too_deep: decided up front; deadline: passed mid-way).",
                [(f'{{reason="{r}"}}', pool.not_judged.get(r, 0)) for r in ("too_long", "queue_too_deep", "deadline")],
            )
            metric(
                "wildguard_tokens_evaluated_total",
                "counter",
                "Tokens the model evaluated.",
                [("", pool.tokens_evaluated())],
            )
            for name, help_, value in getattr(pool, "extra_metrics", list)():  # a fleet's (server/fleet.py)
                metric(name, "counter", help_, [("", value)])
            # Every reason/stage pair from the start, so a rate() sees the first abort.
            metric(
                "wildguard_aborted_total",
                "counter",
                "Requests whose classification was dropped because nobody would read the answer, by reason "
                "(client_closed, timeout) and stage (queued: never started; running: stopped in the engine).",
                [
                    (f'{{reason="{r}",stage="{s}"}}', pool.aborted.get((r, s), 0))
                    for r in ABORT_REASONS
                    for s in ("queued", "running")
                ],
            )
            stats = pool.classifier.engine.stats
            rounds = [stats.aborted] if stats is not None else []
            if rounds:
                metric(
                    "wildguard_engine_aborted_rounds_total",
                    "counter",
                    "Engine rounds stopped inside llama_decode because every call in them was abandoned.",
                    [("", sum(rounds))],
                )
            cache = pool.prefix_cache
            if cache is not None:
                stats = cache.stats
                metric(
                    "wildguard_prefix_cache_hits_total",
                    "counter",
                    "New sequences restored from the prefix cache.",
                    [("", stats.hits)],
                )
                metric(
                    "wildguard_prefix_cache_misses_total",
                    "counter",
                    "New sequences with no useful cached prefix.",
                    [("", stats.misses)],
                )
                metric(
                    "wildguard_prefix_cache_tokens_reused_total",
                    "counter",
                    "Tokens restored instead of evaluated.",
                    [("", stats.tokens_reused)],
                )
                metric("wildguard_prefix_cache_bytes", "gauge", "Bytes of KV state held.", [("", cache.bytes)])
        return "\n".join(out) + "\n"


class MetricsMiddleware:
    """Pure ASGI: times every HTTP request and records its status (404s and 413s included).

    A request whose client disconnected is recorded as 499, whatever the app tried to send.
    """

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]
        disconnected = [False]
        started = [False]

        async def receive_watch():
            message = await receive()
            if message["type"] == "http.disconnect" and not started[0]:  # before any answer
                disconnected[0] = True
            return message

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                started[0] = True
            await send(message)

        try:
            await self.app(scope, receive_watch, send_status)
        finally:
            endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
            code = CLIENT_CLOSED if disconnected[0] or status[0] == CLIENT_CLOSED else status[0]
            self.metrics.observe(endpoint, code, time.perf_counter() - start)
