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


class RecordingEngine(FakeEngine):
    """Records each round's requests (pieces as 'p', calls as 'c')."""

    def __init__(self, seconds: float):
        super().__init__(seconds=seconds)
        self.kinds: list[str] = []

    def run_round(self, batch):
        self.kinds.append("".join("p" if r.piece else "c" for r in batch))
        super().run_round(batch)


def test_waiting_calls_go_before_a_long_inputs_next_piece_but_pieces_never_wait_twice():
    """A long input fed in pieces: a call that arrives while a piece runs gets the next round
    to itself; a piece that gave way runs in the round after, whoever else waits."""
    engine = RecordingEngine(seconds=0.03)
    started, stop = threading.Event(), threading.Event()

    def long_input():
        while not stop.is_set():
            started.set()
            engine.scheduler.submit(Request([1] * 8, [7], piece=True))

    feeder = threading.Thread(target=long_input)
    feeder.start()
    started.wait()
    time.sleep(0.01)  # inside a piece's round
    callers = [threading.Thread(target=engine.scheduler.submit, args=(Request([2], [0]),)) for _ in range(3)]
    callers[0].start()
    callers[0].join()
    for c in callers[1:]:  # arrive together: they share the next round
        c.start()
    for c in callers[1:]:
        c.join()
    stop.set()
    feeder.join()
    calls = [k for k in engine.kinds if "c" in k]
    assert calls[0] == "c", engine.kinds  # the first call ran without the next piece
    assert all(set(k) == {"c"} or "p" in k for k in engine.kinds)
    # a piece never gave way twice in a row: between two call-only rounds a piece ran
    only_calls = [i for i, k in enumerate(engine.kinds) if k and "p" not in k]
    assert all(b - a > 1 for a, b in zip(only_calls, only_calls[1:])), engine.kinds
