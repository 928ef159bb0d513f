"""The round scheduler (backends/scheduler.py) over a fake engine: no llama.cpp, fast tier."""

from __future__ import annotations

import threading
import time

import pytest

from wildguard_lite.backends.scheduler import Interrupt, Request, RoundScheduler
from wildguard_lite.errors import ClassificationCancelled, ClassificationTimeout, ClassifierClosedError


class FakeEngine:
    """Answers each request with the sum of its ids; a round takes `seconds`; records rounds."""

    def __init__(self, seconds: float = 0.02, max_round: int = 8):
        self.seconds = seconds
        self.rounds: list[int] = []
        self.aborts = 0
        self.abort_event = threading.Event()
        self.scheduler = RoundScheduler(self.run_round, max_round=max_round, abort=self.abort)

    def run_round(self, batch):
        self.rounds.append(len(batch))
        self.abort_event.clear()
        if self.abort_event.wait(self.seconds):
            for r in batch:
                r.error, r.done = ClassificationCancelled("aborted"), True
            return
        for r in batch:
            r.result, r.done = sum(r.ids), True

    def abort(self, batch):
        self.aborts += 1
        self.abort_event.set()


def test_a_lone_call_runs_in_its_own_thread():
    engine = FakeEngine(seconds=0)
    assert engine.scheduler.submit(Request([1, 2, 3], [2])) == 6
    assert engine.rounds == [1]


def test_coinciding_calls_share_rounds():
    engine = FakeEngine(seconds=0.05)
    barrier, results = threading.Barrier(8), {}

    def call(i):
        barrier.wait()
        results[i] = engine.scheduler.submit(Request([i, 1], [1]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: i + 1 for i in range(8)}
    assert sum(engine.rounds) == 8
    # The first caller runs alone; the seven that queued meanwhile run in (at most) a few rounds.
    assert len(engine.rounds) < 8


def test_rounds_never_exceed_max_round():
    engine = FakeEngine(seconds=0.02, max_round=3)
    threads = [threading.Thread(target=engine.scheduler.submit, args=(Request([i], [0]),)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(engine.rounds) <= 3 and sum(engine.rounds) == 10


def test_a_queued_call_that_is_cancelled_returns_at_once_and_never_runs():
    engine = FakeEngine(seconds=0.5)
    first = threading.Thread(target=engine.scheduler.submit, args=(Request([1], [0]),))
    first.start()
    time.sleep(0.05)  # the first call's round is running
    cancel = threading.Event()
    threading.Timer(0.05, cancel.set).start()
    start = time.monotonic()
    with pytest.raises(ClassificationCancelled):
        engine.scheduler.submit(Request([2], [0], Interrupt(cancel=cancel)))
    assert time.monotonic() - start < 0.3
    first.join()
    assert engine.rounds == [1]  # the cancelled call never reached the engine


def test_a_running_round_whose_every_call_is_interrupted_is_aborted():
    engine = FakeEngine(seconds=5.0)
    start = time.monotonic()
    with pytest.raises(ClassificationCancelled):
        engine.scheduler.submit(Request([1], [0], Interrupt.make(timeout=0.05)))
    assert time.monotonic() - start < 1.0
    assert engine.aborts == 1


def test_a_deadline_already_past_raises_timeout_before_running():
    engine = FakeEngine(seconds=0.2)
    blocker = threading.Thread(target=engine.scheduler.submit, args=(Request([1], [0]),))
    blocker.start()
    time.sleep(0.02)
    with pytest.raises(ClassificationTimeout):
        engine.scheduler.submit(Request([2], [0], Interrupt.make(timeout=0.0)))
    blocker.join()


def test_close_waits_for_the_running_round_and_refuses_new_calls():
    engine = FakeEngine(seconds=0.2)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", engine.scheduler.submit(Request([4], [0]))))
    t.start()
    time.sleep(0.05)
    engine.scheduler.close()
    t.join()
    assert out["r"] == 4
    with pytest.raises(ClassifierClosedError):
        engine.scheduler.submit(Request([1], [0]))
