"""One classifier, many threads: streams and classify calls at once (the toy's GGUF).

The crash cases run in a child process: before the engine took concurrent calls, each of
them killed the interpreter with SIGSEGV. Verdicts are compared with one-shot `classify`;
a label whose P(yes) is within 0.05 of 0.5 may differ (batch composition moves the last bits
of llama.cpp's logits).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading

import pytest

import wildguard_lite
from wildguard_lite.contract import LABEL_KEYS
from wildguard_lite.errors import ClassificationCancelled, ClassificationTimeout, ClassifierClosedError

CHILD = textwrap.dedent("""
    import json, sys, threading, time
    import wildguard_lite
    from wildguard_lite.errors import ClassifierClosedError
    scenario, model, rows = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    clf = wildguard_lite.load(model, threads=2, slots=4, n_ctx=1024)
    out = {"finals": {}, "closed": 0}

    def stream(i, row):
        s = clf.stream(row["prompt"], interval=1)
        try:
            for word in row["response"].split(" "):
                s.feed(word + " ")
            out["finals"][i] = s.close()
        except ClassifierClosedError:
            out["closed"] += 1

    if scenario == "streams":      # 4 threads, each feeding its own stream word by word
        threads = [threading.Thread(target=stream, args=(i, r)) for i, r in enumerate(rows[:4])]
    elif scenario == "mixed":      # one thread streams while another classifies
        threads = [threading.Thread(target=stream, args=(0, rows[0])),
                   threading.Thread(target=lambda: out.setdefault("classified", clf.classify(rows * 2)))]
    elif scenario == "close":      # close() while streams are checking
        threads = [threading.Thread(target=stream, args=(i, r)) for i, r in enumerate(rows[:2])]
    for t in threads:
        t.start()
    if scenario == "close":
        time.sleep(0.3)
        clf.close()
    for t in threads:
        t.join()
    if scenario != "close":  # the exact texts the streams were fed (a trailing space included)
        fed = [{"prompt": r["prompt"], "response": "".join(w + " " for w in r["response"].split(" "))} for r in rows]
        out["oneshot"] = clf.classify(fed)
        out["rows_alone"] = clf.classify(rows)
        clf.close()
    print(json.dumps(out))
""")


def _rows(heldout, n=4):
    rows = [r for r in heldout if r.get("response")][:n]
    return [{"prompt": r["prompt"], "response": r["response"]} for r in rows]


def _same_verdict(a, b):
    """Labels equal, unless the P(yes) of that label is within 0.05 of 0.5 in either."""
    for key in LABEL_KEYS:
        if a[key] != b[key]:
            near = [s for s in (a["scores"].get(key), b["scores"].get(key)) if s is not None]
            if not near or all(abs(s - 0.5) >= 0.05 for s in near):
                return False
    return True


@pytest.mark.parametrize(
    "scenario",
    [
        "streams",  # 4 threads, own streams, interval=1: SIGSEGV every run before
        "mixed",  # a stream and classify() on one classifier: SIGSEGV before
        "close",  # close() while streams check: SIGSEGV before; now it waits, later feeds refuse
    ],
)
def test_concurrent_use_does_not_crash(scenario, toy_gguf, heldout):
    rows = _rows(heldout)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, scenario, str(toy_gguf["q8_0"]), json.dumps(rows)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if scenario == "close":
        assert len(out["finals"]) + out["closed"] == 2
        return
    for i, final in out["finals"].items():
        assert _same_verdict(final, out["oneshot"][int(i)]), (final, out["oneshot"][int(i)])
    if scenario == "mixed":  # classify() beside a stream equals classify() alone
        for got, want in zip(out["classified"], out["rows_alone"] * 2):
            assert _same_verdict(got, want)


def _feed_round_robin(clf, rows, chunk_words=4):
    streams = [clf.stream(r["prompt"]) for r in rows]
    words = [r["response"].split(" ") for r in rows]
    for start in range(0, max(len(w) for w in words), chunk_words):
        for s, w in zip(streams, words):
            piece = " ".join(w[start : start + chunk_words])
            if piece:
                s.feed(piece + " ")
    return [s.close() for s in streams]


def _feed_one_by_one(clf, rows, chunk_words=4):
    finals = []
    for r in rows:
        s = clf.stream(r["prompt"])
        w = r["response"].split(" ")
        for start in range(0, len(w), chunk_words):
            s.feed(" ".join(w[start : start + chunk_words]) + " ")
        finals.append(s.close())
    return finals


def test_streams_fed_in_turn_keep_their_incremental_cost(toy_gguf, heldout):
    rows = _rows(heldout, 8)
    with wildguard_lite.load(toy_gguf["q8_0"], threads=2, slots=8, n_ctx=1024) as clf:
        before = clf.backend.tokens_evaluated
        alone = _feed_one_by_one(clf, rows)
        one_at_a_time = clf.backend.tokens_evaluated - before
    with wildguard_lite.load(toy_gguf["q8_0"], threads=2, slots=8, n_ctx=1024) as clf:
        before = clf.backend.tokens_evaluated
        interleaved = _feed_round_robin(clf, rows)
        round_robin = clf.backend.tokens_evaluated - before
    # Each stream keeps its own sequence: interleaving adds nothing but the first check's
    # prefix (one-at-a-time streams share the instruction prefix with the previous stream).
    assert round_robin <= 1.1 * one_at_a_time, (round_robin, one_at_a_time)
    for a, b in zip(alone, interleaved):
        assert _same_verdict(a, b)


def test_coinciding_checks_from_threads_are_batched(toy_gguf, heldout):
    rows = _rows(heldout, 8)
    with wildguard_lite.load(toy_gguf["q8_0"], threads=2, slots=8, n_ctx=1024) as clf:
        stats = clf.backend.stats
        barrier, finals = threading.Barrier(len(rows)), {}

        def run(i, row):
            s = clf.stream(row["prompt"])
            words = row["response"].split(" ")
            for start in range(0, len(words), 4):
                barrier.wait(timeout=60)
                s.feed(" ".join(words[start : start + 4]) + " ")
            finals[i] = s.close()

        # Equal word counts so that every thread reaches each barrier.
        n = min(len(r["response"].split(" ")) for r in rows)
        rows = [{"prompt": r["prompt"], "response": " ".join(r["response"].split(" ")[:n])} for r in rows]
        fed = [
            "".join(" ".join(w[s : s + 4]) + " " for s in range(0, n, 4))
            for w in (r["response"].split(" ") for r in rows)
        ]
        oneshot = clf.classify([{"prompt": r["prompt"], "response": t} for r, t in zip(rows, fed)])
        rounds0, requests0 = stats.rounds, stats.requests
        threads = [threading.Thread(target=run, args=(i, r)) for i, r in enumerate(rows)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rounds, requests = stats.rounds - rounds0, stats.requests - requests0
    assert requests >= len(rows)
    assert rounds < requests  # several checks shared engine calls
    for i, final in finals.items():
        assert _same_verdict(final, oneshot[i])


def test_a_cancelled_or_timed_out_call_leaves_the_classifier_consistent(toy_gguf, heldout):
    rows = _rows(heldout, 2)
    long_item = {"prompt": rows[0]["prompt"], "response": " ".join([rows[0]["response"]] * 12)}
    with wildguard_lite.load(toy_gguf["f16"], threads=1, n_ctx=4096) as fresh:
        want = fresh.classify([long_item] + rows)
    with wildguard_lite.load(toy_gguf["f16"], threads=1, n_ctx=4096) as clf:
        with pytest.raises(ClassificationTimeout):
            clf.classify([long_item] * 20, timeout=0.01)
        cancel = threading.Event()
        cancel.set()
        with pytest.raises(ClassificationCancelled):
            clf.classify([long_item], cancel=cancel)
        got = clf.classify([long_item] + rows)
    for a, b in zip(got, want):
        assert _same_verdict(a, b)


def test_calls_after_close_are_refused(toy_gguf):
    clf = wildguard_lite.load(toy_gguf["q8_0"], threads=1, n_ctx=512)
    stream = clf.stream("hello")
    clf.close()
    with pytest.raises(ClassifierClosedError):
        stream.feed("a few words of an answer that trigger a check " * 4)
