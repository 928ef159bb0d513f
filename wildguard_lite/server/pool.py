"""The worker pool: N threads sharing one Classifier (llama.cpp: each call on its own KV
sequence, concurrent calls batched into one engine call), one FIFO, and a bounded admission
count. A list of distinct classifiers also works (one per worker).

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

from ..errors import ClassificationCancelled
from ..runtime import Classifier
from .settings import ServeSettings

ClassifierFactory = Callable[[int, int], Classifier]  # (worker index, threads) -> Classifier


@dataclass
class Job:
    items: list[dict[str, Any]]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    abandoned: bool = False  # the request timed out or its client left: skip or stop its work
    reason: str | None = None  # why it was abandoned (ABORT_REASONS)
    key: str | None = None  # the affinity key (server/affinity.py); a fleet routes by it
    cancel: threading.Event = field(default_factory=threading.Event)


# Why a job's work is dropped (the `reason` label of wildguard_aborted_total).
ABORT_REASONS = ("client_closed", "timeout")


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
        self.parsing_errors = 0
        # (reason, stage) -> jobs whose work was dropped: "queued" skipped before it started,
        # "running" stopped mid-classification.
        self.aborted: dict[tuple[str, str], int] = {}
        # False: abandoned jobs still run to the end once started (the behaviour before
        # abandoned work was stopped; benchmarks compare the two).
        self.abort_abandoned = True
        self._job_seconds = 1.0  # moving average, for Retry-After
        self._lock = threading.Lock()
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._work, args=(clf,), name=f"wildguard-worker-{i}", daemon=True)
            for i, clf in enumerate(classifiers)
        ]
        for thread in self._threads:
            thread.start()

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the backlog's expected work per worker."""
        with self._lock:
            backlog = self.queued + self.running
        return max(1, min(60, math.ceil(self._job_seconds * backlog / self.size)))

    def try_submit(self, items: list[dict[str, Any]], key: str | None = None) -> Job | None:
        """Queue a request, or None when the pool and queue are full (the caller answers 429).
        `key`: its affinity key, which a fleet's pool routes by (one box ignores it)."""
        with self._lock:
            if self.queued + self.running >= self.capacity:
                return None
            self.queued += 1
        loop = asyncio.get_running_loop()
        job = Job(items, loop.create_future(), loop, key=key)
        self._jobs.put(job)
        return job

    def abandon(self, job: Job, reason: str) -> None:
        """The request will not use its answer (`reason` in ABORT_REASONS): stop its work."""
        job.reason = reason
        job.abandoned = True
        job.future.cancel()
        if self.abort_abandoned:
            job.cancel.set()

    def unique_classifiers(self) -> list[Classifier]:
        return list({id(c): c for c in self.classifiers}.values())

    def tokens_evaluated(self) -> int:
        return sum(c.backend.tokens_evaluated for c in self.unique_classifiers())

    def _work(self, clf: Classifier) -> None:
        while True:
            job = self._jobs.get()
            if job is None:  # shutdown sentinel, queued after every admitted job
                return
            with self._lock:
                self.queued -= 1
                if job.abandoned:
                    self._count_abort(job, "queued")
                    continue
                self.running += 1
            start = time.perf_counter()
            try:
                outcome: tuple[bool, Any] = (True, self.run(clf, job))
            except BaseException as exc:  # handed to the request; the worker lives on
                outcome = (False, exc)
            seconds = time.perf_counter() - start
            stopped = not outcome[0] and isinstance(outcome[1], ClassificationCancelled) and job.abandoned
            with self._lock:
                self.running -= 1
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
        return clf.classify(job.items, cancel=job.cancel)

    def _count_abort(self, job: Job, stage: str) -> None:
        key = (job.reason or "client_closed", stage)
        self.aborted[key] = self.aborted.get(key, 0) + 1

    def close(self) -> None:
        """Finish every admitted job, then stop the workers and free the models."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()
        for clf in self.unique_classifiers():
            clf.close()


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
        return load(settings.model, settings.runtime, prefix_cache=prefix_cache, threads=threads)

    return make
