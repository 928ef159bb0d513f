"""asyncio front of the Classifier: the engine runs off the event loop and stops when the
awaiting task is cancelled.

    >>> results = await clf.aclassify(items)        # many concurrent awaits share the engine
    >>> stream = clf.astream("How do I pick a lock?")
    >>> verdict = await stream.afeed(chunk)         # None unless a check ran
    >>> final = await stream.aclose()

Each call runs the synchronous API in a thread of a small pool per classifier (as many
threads as the engine runs calls at once: its slots with llama.cpp, one otherwise), so the
loop only waits on a future. Cancelling the awaiting task (`task.cancel()`, `asyncio.wait_for`,
`asyncio.timeout`, a web framework dropping the request) sets the call's cancel event: llama.cpp
stops inside `llama_decode`, ONNX before its next engine step, and a call still waiting for a
thread never starts. The task then raises `asyncio.CancelledError` once the thread has let go
of the engine, so when `await task` returns the work has really stopped and the classifier is
ready for the next call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .backends.base import check_interrupt
from .errors import ClassificationCancelled
from .protocols import ClassifierLike

if TYPE_CHECKING:
    from .streaming import ResponseStream

_POOLS: "weakref.WeakKeyDictionary[ClassifierLike, concurrent.futures.ThreadPoolExecutor]" = weakref.WeakKeyDictionary()
_POOLS_LOCK = threading.Lock()


def engine_threads_for(clf: ClassifierLike) -> int:
    """How many calls can usefully run at once: the engine's slots (llama.cpp batches up to
    that many per round; a serial engine is entered by one call at a time)."""
    return max(1, clf.engine.slots)


def _pool(clf: ClassifierLike) -> concurrent.futures.ThreadPoolExecutor:
    # One pool per classifier, dropped with it (idle threads then exit).
    with _POOLS_LOCK:
        pool = _POOLS.get(clf)
        if pool is None:
            pool = concurrent.futures.ThreadPoolExecutor(engine_threads_for(clf), thread_name_prefix="wildguard-aio")
            _POOLS[clf] = pool
        return pool


async def run_cancellable(clf: ClassifierLike, fn: Callable[[threading.Event], Any]) -> Any:
    """Run `fn(cancel)` in the classifier's thread pool; cancelling the awaiting task sets
    `cancel`, then waits for `fn` to return before raising CancelledError."""
    cancel = threading.Event()
    job = _pool(clf).submit(fn, cancel)
    waiter = asyncio.wrap_future(job)
    try:
        return await asyncio.shield(waiter)
    except asyncio.CancelledError:
        cancel.set()
        if not job.cancel():  # already running: the engine stops at its next abort check
            await _settle(waiter)
        raise


async def _settle(waiter: asyncio.Future) -> None:
    """Wait for `waiter` to finish, through further cancellations, and consume its outcome
    (the ClassificationCancelled the stopped call raised)."""
    while not waiter.done():
        try:
            await asyncio.shield(waiter)
        except asyncio.CancelledError:
            continue
        except BaseException:
            break
    if not waiter.cancelled():
        waiter.exception()


async def aclassify(
    clf: ClassifierLike,
    items: Sequence[Mapping[str, Any]],
    on_result: Callable[[int, dict[str, Any]], None] | None = None,
    *,
    timeout: float | None = None,
) -> list[dict[str, Any]]:
    """`Classifier.classify` awaited; see `Classifier.aclassify`."""
    check_interrupt(None, timeout)  # before anything is queued
    loop = asyncio.get_running_loop()
    failed: list[BaseException] = []

    def deliver(index: int, result: dict[str, Any]) -> None:
        if failed:
            return
        try:
            assert on_result is not None  # deliver is passed only with one
            on_result(index, result)
        except Exception as exc:  # raised from aclassify, as classify would
            failed.append(exc)

    def run(cancel: threading.Event) -> list[dict[str, Any]]:
        def forward(index: int, result: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(deliver, index, result)
            if failed:  # a callback failed: stop the rest of the work
                cancel.set()

        return clf.classify(items, None if on_result is None else forward, cancel=cancel, timeout=timeout)

    try:
        results = await run_cancellable(clf, run)
    except ClassificationCancelled:
        if failed:  # stopped because a callback failed: that is the error
            raise failed[0] from None
        raise
    # The deliveries were queued on the loop before the thread returned: they have all run.
    if failed:
        raise failed[0]
    return results


class AsyncResponseStream:
    """`ResponseStream` for asyncio; made by `Classifier.astream(prompt)`.

    `await afeed(text)` / `await aclose()` behave as `feed` / `close`, with each check run off
    the loop. Cancelling an `afeed` stops its check; the text stays in the response, unchecked,
    and the next `afeed` or `aclose` checks it. Await one call at a time per stream (as
    `feed` from one thread); different streams may be fed concurrently.
    """

    def __init__(self, stream: "ResponseStream"):
        self.stream = stream

    async def afeed(self, text: str, *, timeout: float | None = None) -> dict[str, Any] | None:
        """Append response text; a verdict when a check ran, else None (see `ResponseStream.feed`)."""
        return await run_cancellable(
            self.stream.classifier, lambda cancel: self.stream.feed(text, cancel=cancel, timeout=timeout)
        )

    async def aclose(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The final verdict on the complete response (see `ResponseStream.close`)."""
        return await run_cancellable(
            self.stream.classifier, lambda cancel: self.stream.close(cancel=cancel, timeout=timeout)
        )

    # The synchronous stream's state, read-only.
    response = property(lambda self: self.stream.response)
    verdict = property(lambda self: self.stream.verdict)
    flagged = property(lambda self: self.stream.flagged)
    flagged_at = property(lambda self: self.stream.flagged_at)
    checks = property(lambda self: self.stream.checks)
