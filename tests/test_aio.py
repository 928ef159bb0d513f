"""The asyncio API (wildguard_lite/aio.py): aclassify and astream off the event loop, task
cancellation down to the engine.

Fast tests use a marker backend whose engine calls the test can hold or slow down (verdicts
decided by markers in the text); the toy GGUF tests show the llama.cpp engine stopping inside
`llama_decode` and batching concurrent awaits.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import wildguard_lite
from server_fakes import HARMFUL, REFUSE, MarkerBackend, build_tokenizer
from wildguard_lite.errors import ClassificationTimeout, ClassifierClosedError
from wildguard_lite.runtime import Classifier

LABELS = ("prompt_harmfulness", "response_refusal", "response_harmfulness")
ITEMS = [
    {"prompt": f"{HARMFUL} request {i}", "response": f"{REFUSE} no"}
    if i % 2
    else {"prompt": f"question {i}", "response": f"answer {i}"}
    for i in range(12)
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


class PacedBackend(MarkerBackend):
    """MarkerBackend whose every engine call first runs `hook` (sleep, wait for the test) and
    is counted."""

    def __init__(self, tokenizer, hook=None):
        super().__init__(tokenizer)
        self.hook = hook
        self.calls = 0

    def next_logits(self, ids):
        if self.hook is not None:
            self.hook()
        self.calls += 1
        return super().next_logits(ids)


def paced(tokenizer, seconds=0.0, hook=None):
    backend = PacedBackend(tokenizer, hook or (lambda: time.sleep(seconds)))
    return Classifier(backend, tokenizer), backend


def test_aclassify_equals_classify(tokenizer):
    clf, _ = paced(tokenizer)
    want = clf.classify(ITEMS)

    async def main():
        seen = []
        got = await clf.aclassify(ITEMS, on_result=lambda i, r: seen.append((i, threading.get_ident())))
        return got, seen

    got, seen = asyncio.run(main())
    assert got == want
    # on_result runs on the loop's thread (asyncio.run's: this one), in order
    assert seen == [(i, threading.get_ident()) for i in range(len(ITEMS))]


def test_the_loop_runs_while_the_engine_works(tokenizer):
    # Each engine call waits until a coroutine on the loop lets it through: with the engine
    # on the loop's own thread this could never finish.
    allowed = threading.Semaphore(0)

    def hook():
        assert allowed.acquire(timeout=10), "the event loop never ran while the engine waited"

    clf, backend = paced(tokenizer, hook=hook)

    async def main():
        task = asyncio.ensure_future(clf.aclassify(ITEMS[:3]))
        ticks = 0
        while not task.done():
            allowed.release()
            ticks += 1
            await asyncio.sleep(0.001)
        return await task, ticks

    results, ticks = asyncio.run(main())
    assert len(results) == 3 and ticks >= backend.calls


def test_cancelling_the_task_stops_the_engine(tokenizer):
    clf, backend = paced(tokenizer, 0.02)  # 12 exchanges x 3 cues: ~0.7 s of engine calls

    async def main():
        task = asyncio.ensure_future(clf.aclassify(ITEMS))
        while backend.calls < 2:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return backend.calls

    calls_at_return = asyncio.run(main())
    time.sleep(0.1)
    # The engine stopped before the task raised, and ran nothing afterwards.
    assert backend.calls == calls_at_return < 3 * len(ITEMS)
    backend.hook = None
    assert clf.classify(ITEMS[:2]) == Classifier(MarkerBackend(tokenizer), tokenizer).classify(ITEMS[:2])


@pytest.mark.parametrize(
    "cancel_how",
    [
        "wait_for",  # asyncio.wait_for's timeout cancels the inner task: TimeoutError, engine stopped
        "timeout=",  # the engine's own deadline: ClassificationTimeout
    ],
)
def test_deadlines_stop_the_engine(tokenizer, cancel_how):
    clf, backend = paced(tokenizer, 0.02)

    async def main():
        if cancel_how == "wait_for":
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(clf.aclassify(ITEMS), 0.1)
        else:
            with pytest.raises(ClassificationTimeout):
                await clf.aclassify(ITEMS, timeout=0.1)
        return backend.calls

    calls = asyncio.run(main())
    time.sleep(0.1)
    assert backend.calls == calls < 3 * len(ITEMS)


def test_a_call_cancelled_before_it_started_never_runs(tokenizer):
    # A non-concurrent engine runs one call at a time: the second waits for a thread, and
    # its cancellation drops it without any engine call.
    gate = threading.Event()
    clf, backend = paced(tokenizer, hook=lambda: gate.wait(10))

    async def main():
        first = asyncio.ensure_future(clf.aclassify(ITEMS[:1]))
        second = asyncio.ensure_future(clf.aclassify(ITEMS[1:2]))
        await asyncio.sleep(0.05)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        gate.set()
        return await first

    first = asyncio.run(main())
    assert len(first) == 1 and backend.calls == 3  # the first item's three cues only


def test_a_failing_on_result_stops_the_call_and_is_raised(tokenizer):
    clf, backend = paced(tokenizer, 0.01)

    def on_result(index, result):
        raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):
        asyncio.run(clf.aclassify(ITEMS, on_result=on_result))
    assert backend.calls < 3 * len(ITEMS)


def test_concurrent_awaits_share_one_classifier(tokenizer):
    clf, _ = paced(tokenizer, 0.001)
    want = clf.classify(ITEMS)

    async def main():
        return await asyncio.gather(*(clf.aclassify([item]) for item in ITEMS))

    got = asyncio.run(main())
    assert [g[0] for g in got] == want


def test_async_stream_equals_the_sync_stream_and_survives_a_cancelled_check(tokenizer):
    clf, backend = paced(tokenizer)
    words = f"first part then {HARMFUL} here and some more words to close the answer".split(" ")
    chunks = [" ".join(words[i : i + 3]) + " " for i in range(0, len(words), 3)]
    sync = clf.stream("a question", interval=4)
    for c in chunks:
        sync.feed(c)
    want = sync.close()

    async def main():
        stream = clf.astream("a question", interval=4)
        gate = threading.Event()
        backend.hook = lambda: gate.wait(10)
        # A check held in the engine, then cancelled: the stream keeps the text, unchecked.
        task = asyncio.ensure_future(stream.afeed(chunks[0] + chunks[1]))
        await asyncio.sleep(0.05)
        task.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        checks_after_cancel = stream.checks
        backend.hook = None
        for c in chunks[2:]:
            await stream.afeed(c)
        return checks_after_cancel, await stream.aclose(), stream

    checks_after_cancel, final, stream = asyncio.run(main())
    assert checks_after_cancel == 0
    assert stream.response == "".join(chunks)
    assert final["response_harmfulness"] == want["response_harmfulness"] == "harmful"
    assert final["flagged"] and stream.flagged


def test_aclassify_after_close_raises_the_closed_error(tokenizer):
    clf, _ = paced(tokenizer)
    clf.close()
    with pytest.raises(ClassifierClosedError):
        asyncio.run(clf.aclassify(ITEMS[:1]))


# -- on the toy GGUF (llama.cpp: batching, the abort inside llama_decode) ------------------------
def _long_item(heldout, repeat):
    row = next(r for r in heldout if r.get("response"))
    return {"prompt": row["prompt"], "response": " ".join([row["response"]] * repeat)}


def test_cancelling_aclassify_aborts_llama_decode(toy_gguf, heldout, monkeypatch):
    rows = [{"prompt": r["prompt"], "response": r["response"]} for r in heldout if r.get("response")][:3]
    with wildguard_lite.load(toy_gguf["f16"], threads=1, n_ctx=4096) as fresh:
        want = fresh.classify(rows)
    with wildguard_lite.load(toy_gguf["f16"], threads=1, n_ctx=4096) as clf:
        backend, stats = clf.backend, clf.backend.stats
        repeat = 30  # long enough for several llama_decode calls, whatever the row's length
        while len(clf.encode(_long_item(heldout, repeat))[0]) <= 2 * backend.n_batch:
            repeat += 30
        long_item = _long_item(heldout, repeat)
        ids, _ = clf.encode(long_item)
        calls = -(-len(ids) // backend.n_batch)
        assert calls >= 2, len(ids)
        # The toy decodes in milliseconds: each llama_decode call first waits 50 ms, so the
        # cancel (set when the first call begins) lands while the prefill is under way.
        decode, started = backend._llama_cpp.llama_decode, threading.Event()

        def slow_decode(ctx, batch):
            started.set()
            time.sleep(0.05)
            return decode(ctx, batch)

        monkeypatch.setattr(backend._llama_cpp, "llama_decode", slow_decode)

        async def main():
            task = asyncio.ensure_future(clf.aclassify([long_item]))
            while not started.is_set():
                await asyncio.sleep(0.001)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        assert stats.aborted == 1  # llama_decode returned "aborted" (the abort callback fired)
        assert stats.decode_calls < calls  # stopped before the prefill's end
        monkeypatch.setattr(backend._llama_cpp, "llama_decode", decode)
        got = clf.classify(rows)
    for a, b in zip(got, want):
        assert {k: a[k] for k in LABELS} == {k: b[k] for k in LABELS}
        for key, score in a["scores"].items():
            assert (score is None) == (b["scores"][key] is None)
            assert score is None or abs(score - b["scores"][key]) < 0.02


def test_concurrent_aclassify_on_the_toy_is_batched_and_equals_classify(toy_gguf, heldout):
    rows = [{"prompt": r["prompt"], **({"response": r["response"]} if r.get("response") else {})} for r in heldout[:8]]
    warm = {"prompt": "An earlier question.", "response": "An earlier answer."}
    with wildguard_lite.load(toy_gguf["q8_0"], threads=1, slots=8, n_ctx=1024) as clf:
        backend, stats = clf.backend, clf.backend.stats

        def measured(run):
            backend.reset()
            clf.classify([warm])  # WildGuard's template in one sequence, as in a running app
            tokens0, rounds0, requests0 = backend.tokens_evaluated, stats.rounds, stats.requests
            results = run()
            return results, backend.tokens_evaluated - tokens0, stats.rounds - rounds0, stats.requests - requests0

        async def together():
            return [r[0] for r in await asyncio.gather(*(clf.aclassify([row]) for row in rows))]

        want, sequential_tokens, _, _ = measured(lambda: clf.classify(rows))
        got, concurrent_tokens, rounds, requests = measured(lambda: asyncio.run(together()))
    assert rounds < requests  # calls shared engine rounds
    # Each call reuses the template's KV (copied into its own sequence) and no call cuts
    # another's sequence: before, concurrent calls evaluated ~1.6x the tokens.
    assert concurrent_tokens <= 1.1 * sequential_tokens, (concurrent_tokens, sequential_tokens)
    for a, b in zip(got, want):
        for key in ("prompt_harmfulness", "response_refusal", "response_harmfulness"):
            near = [s for s in (a["scores"][key], b["scores"][key]) if s is not None]
            assert a[key] == b[key] or any(abs(s - 0.5) < 0.05 for s in near), (a, b)
