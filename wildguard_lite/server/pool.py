"""The worker pool: N threads sharing one Classifier (llama.cpp: each call on its own KV
sequence, concurrent calls batched into one engine call), one FIFO, and a bounded admission
count.

Abandoned work stops: when a request's client leaves or its time runs out, `abandon` sets the
job's cancel event, so a queued job is skipped and a running one stops inside the engine
(llama.cpp: in `llama_decode`; other engines before their next step) and frees its worker."""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ClassificationCancelled, WildGuardLiteError
from ..runtime import Classifier
from .settings import ServeSettings

ClassifierFactory = Callable[[int, int], Classifier]  # (worker index, threads) -> Classifier

# The running rate: busy time this long counts half as much as the time since (a time-weighted
# average: a 20 s run of a long input outweighs a hundred 50 ms calls, as it should, since the
# rate decides about long inputs, and a tiny model runs short inputs far faster per token).
RATE_HALF_LIFE_S = 10.0
# Busy stretches shorter than this say little about the rate (timer and thread noise).
MIN_SAMPLE_S = 0.05


class RateEstimate:
    """Tokens per second the engine evaluates while busy: tokens over seconds of the busy
    stretches, each older second weighing less (RATE_HALF_LIFE_S). The seed counts as
    `seed_seconds` of busy time.

    `value` is None until the first seed or sample (nothing is refused up front before the
    engine was measured; a deadline passed mid-way still fails closed)."""

    def __init__(self, seed: float | None = None, seed_seconds: float = 1.0):
        seeded = seed is not None and seed > 0 and math.isfinite(seed) and seed_seconds > 0
        self._tokens = seed * seed_seconds if seeded else 0.0  # type: ignore[operator]
        self._seconds = seed_seconds if seeded else 0.0
        self.samples = 0
        self._lock = threading.Lock()

    @property
    def value(self) -> float | None:
        with self._lock:
            return self._tokens / self._seconds if self._seconds > 0 else None

    def sample(self, tokens: int, seconds: float) -> None:
        if tokens <= 0 or seconds < MIN_SAMPLE_S:
            return
        keep = 0.5 ** (seconds / RATE_HALF_LIFE_S)
        with self._lock:
            self.samples += 1
            self._tokens = self._tokens * keep + tokens
            self._seconds = self._seconds * keep + seconds


@dataclass(eq=False)
class Job:
    items: list[dict[str, Any]]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    plans: list | None = None  # Classifier.plan(items), made before admission
    tokens: int = 0  # what the engine evaluates at most for it (Classifier.plan_tokens)
    started: float | None = None  # time.monotonic() when a worker took it
    partial: dict[int, dict[str, Any]] = field(default_factory=dict)  # item index -> verdict, as they finish
    client: str | None = None  # who sent it (an API key's hash or an address), for per-client limits
    abandoned: bool = False  # the request timed out or its client left: skip or stop its work
    reason: str | None = None  # why it was abandoned (ABORT_REASONS)
    key: str | None = None  # the affinity key (server/affinity.py); a fleet routes by it
    cancel: threading.Event = field(default_factory=threading.Event)


# Why a job's work is dropped (the `reason` label of wildguard_aborted_total).
ABORT_REASONS = ("client_closed", "timeout")


class WorkerPool:
    """`workers` threads sharing `classifier` behind one FIFO; admits at most `size + max_queue`
    requests at a time."""

    def __init__(
        self,
        classifier: Classifier,
        workers: int,
        max_queue: int,
        prefix_cache=None,
        tokens_per_second: float | None = None,
        client_limits: tuple[int, int] = (0, 0),
        seed_seconds: float = 1.0,
    ):
        self.classifier = classifier
        self.size = workers
        self.capacity = self.size + max_queue
        self.prefix_cache = prefix_cache
        self.queued = 0
        self.running = 0
        self.items_done = 0
        self.parsing_errors = 0
        # (reason, stage) -> jobs whose work was dropped: "queued" skipped before it started,
        # "running" stopped mid-classification.
        self.aborted: dict[tuple[str, str], int] = {}
        # False: abandoned jobs still run to the end once started (the behaviour before
        # abandoned work was stopped; benchmarks compare the two).
        self.abort_abandoned = True
        self._job_seconds = 1.0  # moving average, for Retry-After
        # The engine's tokens/s while busy (server/budget.py decides up front from it), measured
        # over busy stretches: from the moment a worker starts on an idle pool to each job's end.
        self.rate = RateEstimate(tokens_per_second, seed_seconds)
        self._busy_mark: tuple[float, int] | None = None
        self._busy_sum: tuple[float, int] = (0.0, 0)  # busy seconds and tokens not yet sampled
        self._admitted: set[Job] = set()
        # A running request shares the engine with the others in rounds of one input (at most a
        # context) per caller: a new request waits for at most about this many of each one's tokens.
        self.share_tokens = 2 * classifier.backend.n_ctx
        self.not_judged: dict[str, int] = {}  # reason -> items answered fail-closed unjudged
        # Per client (0: no limit): requests admitted at once, and tokens admitted at once (a
        # client's first request is admitted whatever its size: the deadline rule judges it).
        self.client_max_requests, self.client_max_tokens = client_limits
        self._clients: dict[str, tuple[int, int]] = {}  # client -> (requests, tokens) admitted
        self._lock = threading.Lock()
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._work, args=(classifier,), name=f"wildguard-worker-{i}", daemon=True)
            for i in range(workers)
        ]
        try:
            for thread in self._threads:
                thread.start()
        except RuntimeError as exc:  # "can't start new thread": a process or memory limit
            for _ in self._threads:
                self._jobs.put(None)  # the started ones stop
            raise WildGuardLiteError(
                f"could not start {self.size} worker threads ({exc}); start serve with fewer --workers"
            ) from None

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the backlog's expected work per worker."""
        with self._lock:
            backlog = self.queued + self.running
        return max(1, min(60, math.ceil(self._job_seconds * backlog / self.size)))

    def try_submit(
        self,
        items: list[dict[str, Any]],
        plans: list | None = None,
        tokens: int = 0,
        client: str | None = None,
        key: str | None = None,
    ) -> Job | str:
        """Queue a request (with its plans and token count when known), or say why not (the
        caller answers 429): the pool and queue are full, or `client` is over its limits.
        `key`: its affinity key, which a fleet's pool routes by (one box ignores it)."""
        loop = asyncio.get_running_loop()
        job = Job(items, loop.create_future(), loop, plans, tokens, client=client, key=key)
        with self._lock:
            if self.queued + self.running >= self.capacity:
                return f"all {self.size} worker(s) busy and the queue ({self.capacity - self.size}) is full"
            requests, held = self._clients.get(client, (0, 0)) if client is not None else (0, 0)
            if self.client_max_requests and requests >= self.client_max_requests:
                return (
                    f"this client has {requests} requests in flight, its limit (--client-max-requests "
                    f"{self.client_max_requests}); send the next when one is answered"
                )
            if self.client_max_tokens and requests and held + tokens > self.client_max_tokens:
                return (
                    f"this client has {held} tokens in flight and this request adds {tokens}, over its limit "
                    f"(--client-max-tokens {self.client_max_tokens}); send it when one is answered"
                )
            if client is not None:
                self._clients[client] = (requests + 1, held + tokens)
            self.queued += 1
            self._admitted.add(job)
        self._jobs.put(job)
        return job

    def _release(self, job: Job) -> None:
        """A job is over (lock held): it no longer counts against the queue or its client."""
        self._admitted.discard(job)
        if job.client is not None and job.client in self._clients:
            requests, held = self._clients[job.client]
            if requests <= 1:
                del self._clients[job.client]
            else:
                self._clients[job.client] = (requests - 1, held - job.tokens)

    def current_rate(self) -> float | None:
        """The rate with the busy time so far counted (a long job's progress moves it before
        the job ends)."""
        with self._lock:
            self._sample_rate()
        return self.rate.value

    def estimate_seconds(self, tokens: int) -> float | None:
        """Seconds until a request of `tokens` would finish, with the work admitted before it,
        at the measured rate (None before the engine was measured). With a worker free it
        shares the engine with the running requests (each costs it at most `share_tokens`, or
        what that one has left); with every worker busy it waits for all of them."""
        rate = self.rate.value
        if rate is None:
            return None
        now = time.monotonic()
        with self._lock:
            jobs = list(self._admitted)
            shared = self.queued == 0 and self.running < self.size
            running = max(1, self.running)
        left = [
            job.tokens if job.started is None else max(0.0, job.tokens - rate * (now - job.started) / running)
            for job in jobs
        ]
        ahead = sum(min(n, tokens + self.share_tokens) for n in left) if shared else sum(left)
        return (ahead + tokens) / rate

    def count_not_judged(self, reason: str, items: int) -> None:
        with self._lock:
            self.not_judged[reason] = self.not_judged.get(reason, 0) + items

    def abandon(self, job: Job, reason: str) -> None:
        """The request will not use its answer (`reason` in ABORT_REASONS): stop its work."""
        job.reason = reason
        job.abandoned = True
        job.future.cancel()
        if self.abort_abandoned:
            job.cancel.set()

    def tokens_evaluated(self) -> int:
        return self.classifier.backend.tokens_evaluated

    def _work(self, clf: Classifier) -> None:
        while True:
            job = self._jobs.get()
            if job is None:  # shutdown sentinel, queued after every admitted job
                return
            with self._lock:
                self.queued -= 1
                if job.abandoned:
                    self._release(job)
                    self._count_abort(job, "queued")
                    continue
                if self.running == 0:
                    self._busy_mark = (time.monotonic(), self.tokens_evaluated())
                self.running += 1
                job.started = time.monotonic()
            start = time.perf_counter()
            try:
                outcome: tuple[bool, Any] = (True, self.run(clf, job))
            except BaseException as exc:  # handed to the request; the worker lives on
                outcome = (False, exc)
            seconds = time.perf_counter() - start
            stopped = not outcome[0] and isinstance(outcome[1], ClassificationCancelled) and job.abandoned
            with self._lock:
                self.running -= 1
                self._release(job)
                self._sample_rate()
                if stopped:
                    self._count_abort(job, "running")
                else:  # a stopped job's short run says nothing about the next job's length
                    self._job_seconds = 0.8 * self._job_seconds + 0.2 * seconds
                if outcome[0]:
                    self.items_done += len(job.items)
                    self.parsing_errors += sum(bool(r.get("is_parsing_error")) for r in outcome[1])
            job.loop.call_soon_threadsafe(settle, job.future, outcome)

    def run(self, clf: Classifier, job: Job) -> list[dict[str, Any]]:
        """One job's classification (a fleet's pool sends it to a replica by its key)."""
        record = job.partial.__setitem__
        if job.plans is None:
            return clf.classify(job.items, on_result=record, cancel=job.cancel)
        # planned (and counted) before admission: not tokenized twice
        return clf.classify_planned(job.plans, on_result=record, cancel=job.cancel)

    def _sample_rate(self) -> None:
        """At a job's end or a decision (lock held): the busy time and tokens since the last mark
        are added up, and become one rate sample once they span MIN_SAMPLE_S (idle time never
        counts)."""
        if self._busy_mark is None:
            return
        now, tokens = time.monotonic(), self.tokens_evaluated()
        since, before = self._busy_mark
        self._busy_sum = (self._busy_sum[0] + now - since, self._busy_sum[1] + tokens - before)
        self._busy_mark = (now, tokens) if self.running else None
        if self._busy_sum[0] >= MIN_SAMPLE_S:
            self.rate.sample(self._busy_sum[1], self._busy_sum[0])
            self._busy_sum = (0.0, 0)

    def _count_abort(self, job: Job, stage: str) -> None:
        key = (job.reason or "client_closed", stage)
        self.aborted[key] = self.aborted.get(key, 0) + 1

    def close(self) -> None:
        """Finish every admitted job, then stop the workers and free the model."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()
        self.classifier.close()


def settle(future: asyncio.Future, outcome: tuple[bool, Any]) -> None:
    if future.done():  # timed out or cancelled meanwhile
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
    from ..backends.llama import PrefixStateCache

    return PrefixStateCache(int(settings.prefix_cache_mb * (1 << 20)))


def default_factory(settings: ServeSettings, prefix_cache) -> ClassifierFactory:
    """Load `settings.model` with `settings.runtime` (called once: the workers share the
    classifier) with the shared prefix cache."""

    def make(index: int, threads: int) -> Classifier:
        from ..loading import load

        assert settings.model is not None  # serve requires --model
        return load(
            settings.model,
            settings.runtime,
            prefix_cache=prefix_cache,
            threads=threads,
            kv_tokens=settings.kv_pool_tokens,
        )

    return make
