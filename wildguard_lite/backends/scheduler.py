"""Many threads, one engine: the requests pending at the same moment run as one round.

There is no scheduler thread. A caller queues its request and, when the engine is idle,
becomes the round's runner: it takes every pending request (up to `max_round`), runs them in
one engine call, hands each its result and wakes the others; requests queued meanwhile form
the next round. Under load rounds therefore fill up by themselves (continuous batching), and a
lone caller pays no hand-off to another thread.

Pieces of a long input (`piece`) give way: a round takes the waiting calls without the pending
pieces, unless the round before already did (so a long input still advances every other round):
a short call waits for the round in progress, then runs on its own instead of beside a piece
that attends over thousands of cached tokens.

Cancellation: a request carries an `Interrupt` (a cancel event and/or a deadline). A waiting
caller whose request is interrupted gets control back at once (its result, if computed, is
dropped). A running round is stopped inside the engine (`abort`) only when every request in
it is interrupted, since the others still want their results; a watchdog thread checks that
every few milliseconds while such a round runs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from ..errors import ClassifierClosedError
from .base import Interrupt, interrupted

# How often a waiting caller or the watchdog looks at cancel events and deadlines (seconds).
POLL_S = 0.005
# After a round that had company, the next runner waits this long for callers that are on their
# way (threads released together, e.g. chunks of several chats arriving at once) before it takes
# the round: without it the first caller ran alone and the others formed a second round. A lone
# caller (last round of one) never waits.
LINGER_S = 0.002


@dataclass(eq=False)
class Request:
    """One engine call: logits of `ids` at `positions` (an engine subclasses it for its own
    per-request state); `result` is set once, when the round has its answer."""

    ids: list[int]
    positions: list[int]
    interrupt: Interrupt | None = None
    result: Any = None
    error: BaseException | None = None
    done: bool = False
    piece: bool = False  # a piece of a long input, evaluated ahead of its call: may wait a round


R = TypeVar("R", bound=Request)


class RoundScheduler(Generic[R]):
    """Runs requests from many threads in rounds; see the module docstring."""

    def __init__(
        self,
        run_round: Callable[[list[R]], None],
        max_round: int,
        abort: Callable[[list[R]], None] | None = None,
    ):
        self._run_round = run_round
        self.max_round = max_round
        self._abort = abort
        self._cv = threading.Condition()
        self._pending: list[R] = []
        self._current: list[R] = []
        self._running = False
        self._closed = False
        self.rounds = 0  # engine rounds run (a round is one batched engine call)
        self.requests = 0
        self._last_round = 1
        self._pieces_waited = False  # the last round left the pending pieces for other calls

    def submit(self, request: R) -> Any:
        """Queue `request`, wait for (or run) its round, and return its result."""
        with self._cv:
            if self._closed:
                raise ClassifierClosedError("the engine was closed; load the model again")
            self._pending.append(request)
            while not request.done:
                if interrupted(request.interrupt):
                    # Still queued: drop it. In the running round: its result will be ignored.
                    if request in self._pending:
                        self._pending.remove(request)
                    assert request.interrupt is not None  # interrupted() says so
                    request.interrupt.check()
                if not self._running and self._pending:
                    self._lead()
                    continue
                self._cv.wait(POLL_S if request.interrupt is not None else None)
        if request.error is not None:
            raise request.error
        return request.result

    def _lead(self) -> None:
        """Run one round of pending requests (called with the condition held)."""
        if self._last_round > 1 and len(self._pending) < self.max_round:
            self._running = True  # others queue meanwhile instead of leading
            self._cv.wait(LINGER_S)
        batch = self._take()
        self._running, self._current = True, batch
        self._last_round = len(batch)
        self.rounds += 1
        self.requests += len(batch)
        finished = threading.Event()
        if self._abort is not None and any(r.interrupt is not None for r in batch):
            threading.Thread(
                target=self._watch, args=(batch, finished), daemon=True, name="wildguard-abort-watch"
            ).start()
        self._cv.release()
        try:
            self._run_round(batch)
        except BaseException as exc:  # a failed round fails its requests, not the runner's thread
            for r in batch:
                if not r.done:
                    r.error, r.done = exc, True
        finally:
            finished.set()
            self._cv.acquire()
            for r in batch:
                r.done = True
            self._running, self._current = False, []
            self._cv.notify_all()

    def _take(self) -> list[R]:
        """The next round's requests (condition held): the calls without the pieces when both
        wait, but pieces never wait two rounds in a row."""
        others = [r for r in self._pending if not r.piece]
        pieces = [r for r in self._pending if r.piece]
        if others and pieces and not self._pieces_waited:
            batch = others[: self.max_round]
            self._pieces_waited = True
        else:  # the pieces first: one that gave way runs now, even behind a full round of calls
            batch = (pieces + others)[: self.max_round]
            self._pieces_waited = False
        taken = set(map(id, batch))
        self._pending = [r for r in self._pending if id(r) not in taken]
        return batch

    def _watch(self, batch: list[R], finished: threading.Event) -> None:
        while not finished.wait(POLL_S):
            if all(interrupted(r.interrupt) for r in batch) and self._abort is not None:
                self._abort(batch)
                return

    def idle(self):
        """A context in which no round runs (for maintenance such as dropping the KV cache)."""
        scheduler = self

        class _Idle:
            def __enter__(self):
                scheduler._cv.acquire()
                while scheduler._running:
                    scheduler._cv.wait()

            def __exit__(self, *exc):
                scheduler._cv.release()

        return _Idle()

    def close(self) -> None:
        """Refuse new requests, fail the queued ones, and wait for the running round."""
        with self._cv:
            self._closed = True
            for r in self._pending:
                r.error, r.done = ClassifierClosedError("the engine was closed while this call waited"), True
            self._pending.clear()
            self._cv.notify_all()
            while self._running:
                self._cv.wait()
