"""Streaming moderation and the one-pass cue scoring.

Equalities the project controls: the one-pass path against the sequential one (on a fake
engine whose logits are a pure function of the token sequence, and on the toy GGUF), and a
streamed verdict against the one-shot verdict on the same text (toy). No assertion depends on
what the toy thinks of a given text.
"""

import random
import zlib

import numpy as np
import pytest

import wildguard_lite
from wildguard_lite.backends.base import Backend, check_positions
from wildguard_lite.benchmarks.data import to_item
from wildguard_lite.contract import LABEL_KEYS
from wildguard_lite.errors import InputTooLongError, InvalidInputError
from wildguard_lite.config import RuntimeConfig
from wildguard_lite.runtime import Classifier
from wildguard_lite.streaming import StreamRule
from wildguard_lite.tokenization import load_tokenizer_from_folder


class SequenceBackend(Backend):
    """Logits that depend only on the token sequence (its last `window` tokens, or all), so
    two call patterns that reach the same sequences must give the same verdicts. The top
    token is yes / no / the first n/a piece / another token with fixed odds."""

    def __init__(self, tok, window=None, n_ctx=4096):
        self.tok, self.window, self.n_ctx, self.n_vocab = tok, window, n_ctx, tok.vocab_size
        self.calls = 0

    def _logits(self, ids):
        ids = ids if self.window is None else ids[-self.window :]
        rng = np.random.default_rng(zlib.crc32(np.asarray(ids, dtype=np.int64).tobytes()))
        logits = rng.normal(size=self.n_vocab).astype(np.float32)
        roll = rng.random()
        tok = self.tok
        top = tok.yes_id if roll < 0.4 else tok.no_id if roll < 0.75 else tok.na_ids[0] if roll < 0.9 else 3
        logits[top] += 12.0
        # The other answer close behind, so P(yes) spreads over (0, 1).
        other = tok.no_id if top == tok.yes_id else tok.yes_id
        logits[other] = logits[top] - rng.exponential(2.0)
        return logits

    def next_logits(self, ids):
        self.calls += 1
        return self._logits(list(ids))

    def logits_at(self, ids, positions):
        self.calls += 1
        return [self._logits(list(ids)[: p + 1]) for p in check_positions(ids, positions)]


@pytest.fixture(scope="module")
def tok(toy_dir):
    return load_tokenizer_from_folder(toy_dir)


def _fake(tok, window=None, n_ctx=4096, **config):
    backend = SequenceBackend(tok, window=window, n_ctx=n_ctx)
    return Classifier(backend, tok, RuntimeConfig(**config)), backend


def _items(rows, n):
    return [to_item(r) for r in rows[:n]]


def test_one_pass_equals_sequential_on_a_sequence_function(tok, heldout):
    items = _items(heldout, 200)
    one, _ = _fake(tok, one_pass=True)
    seq, _ = _fake(tok, one_pass=False)
    ours, theirs = one.classify(items), seq.classify(items)
    assert ours == theirs  # same sequences, same logits: exactly equal
    # The fake covers every branch: answers, n/a and unreadable answers.
    assert any(r["is_parsing_error"] for r in ours)
    # n/a with a response present is resolved from P(yes), on both paths alike.
    assert any("response_refusal" in r.get("na_resolved", ()) and "response" in i for r, i in zip(ours, items))


def test_one_engine_call_when_the_guess_holds(tok, heldout):
    # Logits from the last 3 tokens only: each cue gets the same answer whatever came before.
    clf, backend = _fake(tok, window=3)
    for item in _items(heldout, 30):
        ids, prompt_only = clf.encode(item)
        first, answers = clf.score_ids(ids, prompt_only)
        calls = backend.calls
        again, answers_again = clf.score_ids(ids, prompt_only, guess=answers)
        assert again == first and answers_again == answers
        assert backend.calls - calls == 1
    # Without a right guess it never takes more calls than there are cues.
    clf, backend = _fake(tok)
    for item in _items(heldout, 30):
        calls = backend.calls
        clf.classify([item])
        assert backend.calls - calls <= (1 if "response" not in item else 3)


def test_stream_checks_follow_the_cadence(tok):
    clf, backend = _fake(tok, window=3)
    stream = clf.stream("Tell me a story.", interval=8)
    text = "Once upon a time there was a small village by a river, and every morning " * 4
    verdicts = [stream.feed(ch) for ch in text]
    ran = [v for v in verdicts if v is not None]
    assert stream.checks == len(ran) >= 4
    # Each check saw at least `interval` new tokens, counted on the whole exchange.
    sizes = [v["response_tokens"] for v in ran]
    assert all(b - a >= 6 for a, b in zip([0] + sizes, sizes))  # chunk estimates may differ by a token or two
    calls = backend.calls
    final = stream.close()
    assert stream.close() is final  # idempotent
    assert final == clf.score_ids(*clf.encode({"prompt": stream.prompt, "response": text}))[0] | {
        "flagged": final["flagged"],
        "response_tokens": final["response_tokens"],
    }
    with pytest.raises(InvalidInputError, match="after close"):
        stream.feed("more")
    # Closing right after a check that saw everything runs no new check.
    stream = clf.stream("Tell me a story.", interval=1)
    assert stream.feed("Hello there.") is not None
    calls = backend.calls
    stream.close()
    assert backend.calls == calls


@pytest.mark.parametrize("consecutive", [1, 2, 3])
def test_flag_latches_after_consecutive_hits(tok, heldout, consecutive):
    clf, _ = _fake(tok)  # answers vary from check to check
    rule = StreamRule(consecutive=consecutive)
    response = " ".join(r["response"] for r in heldout[:60] if r.get("response"))
    stream = clf.stream(heldout[0]["prompt"], rule=rule, interval=2)
    streak, expected, checks = 0, False, 0
    for word in response.split(" ")[:300]:
        verdict = stream.feed(word + " ")
        if verdict is None:
            continue
        streak = streak + 1 if rule.hit(verdict) else 0
        expected = expected or streak >= consecutive
        assert verdict["flagged"] == expected
        checks += 1
    assert checks >= 20


@pytest.mark.parametrize(
    "rule, verdict, hit",
    [
        # The default follows the check's label.
        (
            StreamRule(),
            {"response_harmfulness": "harmful", "is_parsing_error": False, "scores": {"response_harmfulness": 0.6}},
            True,
        ),
        (
            StreamRule(),
            {"response_harmfulness": "unharmful", "is_parsing_error": False, "scores": {"response_harmfulness": 0.4}},
            False,
        ),
        # A threshold reads the score instead.
        (
            StreamRule(threshold=0.3),
            {"response_harmfulness": "unharmful", "is_parsing_error": False, "scores": {"response_harmfulness": 0.4}},
            True,
        ),
        (
            StreamRule(threshold=0.5),
            {"response_harmfulness": "unharmful", "is_parsing_error": False, "scores": {"response_harmfulness": 0.4}},
            False,
        ),
        # n/a (no response yet) is not a hit.
        (
            StreamRule(threshold=0.1),
            {"response_harmfulness": None, "is_parsing_error": False, "scores": {"response_harmfulness": None}},
            False,
        ),
        # An unreadable answer is never safe.
        (
            StreamRule(),
            {"response_harmfulness": None, "is_parsing_error": True, "scores": {"response_harmfulness": None}},
            True,
        ),
        # Another label can be watched.
        (
            StreamRule(label="response_refusal"),
            {"response_refusal": "refusal", "is_parsing_error": False, "scores": {"response_refusal": 0.9}},
            True,
        ),
    ],
)
def test_rule_hit(rule, verdict, hit):
    assert rule.hit(verdict) is hit


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda clf: StreamRule(label="harm"), "unknown label"),  # not one of the three
        (lambda clf: StreamRule(threshold=1.5), "from 0 to 1"),  # out of range
        (lambda clf: StreamRule(consecutive=0), "positive integer"),
        (lambda clf: clf.stream("hi", interval=0), "positive number of tokens"),
        (lambda clf: clf.stream(42), "'prompt' must be a string"),
        (lambda clf: clf.stream("hi").feed(b"bytes"), "takes response text"),
    ],
)
def test_bad_stream_arguments(tok, make, message):
    clf, _ = _fake(tok)
    with pytest.raises(InvalidInputError, match=message):
        make(clf)


def test_stream_too_long_and_two_threads(tok):
    clf, _ = _fake(tok, n_ctx=256)
    stream = clf.stream("hi", interval=4)
    with pytest.raises(InputTooLongError):
        for _ in range(200):
            stream.feed("word after word ")
    stream = clf.stream("hi")
    stream._busy.acquire()  # another thread is inside feed()
    try:
        with pytest.raises(InvalidInputError, match="one thread"):
            stream.feed("x")
    finally:
        stream._busy.release()


# -- the toy GGUF: real engine, real tokenizer boundaries ---------------------------------------


def _chunks(text, rng):
    """Random cuts, mid-word included, 1-40 characters each."""
    out, pos = [], 0
    while pos < len(text):
        step = rng.randint(1, 40)
        out.append(text[pos : pos + step])
        pos += step
    return out


def _close(a, b, tol=2e-3):
    assert all(a[k] == b[k] for k in (*LABEL_KEYS, "is_parsing_error"))
    for k in LABEL_KEYS:
        assert (a["scores"][k] is None) == (b["scores"][k] is None)
        if a["scores"][k] is not None:
            assert abs(a["scores"][k] - b["scores"][k]) < tol


@pytest.fixture(scope="module")
def toy_clf(toy_gguf):
    with wildguard_lite.load(toy_gguf["f16"], threads=2) as clf:
        yield clf


def test_streamed_verdict_equals_one_shot_on_toy(toy_clf, heldout):
    rng = random.Random(0)
    items = [i for i in _items(heldout, 120) if len(i.get("response", "")) > 60][:12]
    assert len(items) >= 8
    for item in items:
        stream = toy_clf.stream(item["prompt"], interval=rng.choice([4, 8, 16]))
        for chunk in _chunks(item["response"], rng):
            verdict = stream.feed(chunk)
            if verdict is not None and rng.random() < 0.3:
                # Each check is the one-shot verdict on the text so far (then the stream
                # resumes after another sequence used the engine).
                _close(verdict, toy_clf.classify_one(item["prompt"], stream.response))
        _close(stream.close(), toy_clf.classify_one(item["prompt"], item["response"]))
    # An empty stream closes on the prompt alone.
    _close(toy_clf.stream("How do I bake bread?").close(), toy_clf.classify_one("How do I bake bread?"))


def test_one_pass_equals_sequential_on_toy(toy_gguf, heldout):
    items = _items(heldout, 80)
    with wildguard_lite.load(toy_gguf["f16"], threads=2, one_pass=False) as clf:
        sequential = clf.classify(items)
    with wildguard_lite.load(toy_gguf["f16"], threads=2) as clf:
        one_pass = clf.classify(items)
    for a, b in zip(one_pass, sequential):
        _close(a, b)


def test_llama_logits_at_equals_next_logits(toy_gguf, tok, heldout):
    with wildguard_lite.load(toy_gguf["f16"], threads=2) as clf:
        ids, _ = clf.encode(to_item(heldout[0]))
        positions = [len(ids) - 20, len(ids) - 7, len(ids) - 1]
        batched = clf.backend.logits_at(ids, positions)
        for p, logits in zip(positions, batched):
            one = clf.backend.next_logits(ids[: p + 1])
            assert np.abs(one - logits).max() < 1e-2 * max(1.0, np.abs(one).max())
            assert int(np.argmax(one)) == int(np.argmax(logits))
        with pytest.raises(ValueError, match="positions must increase"):
            clf.backend.logits_at(ids, [5, 2])


@pytest.fixture(scope="module")
def toy_onnx_fp32(toy_dir, tmp_path_factory):
    from rich.console import Console

    from wildguard_lite.convert.pipeline import ConvertOptions, convert_checkpoint

    out = tmp_path_factory.mktemp("toy-onnx-stream")
    manifest = convert_checkpoint(
        ConvertOptions(source=str(toy_dir), out_dir=out, formats=("onnx",), quants=("fp32",), name="toy", threads=2),
        console=Console(quiet=True),
    )
    return out / manifest["artifacts"][0]["file"]


def test_onnx_one_pass_and_stream(toy_onnx_fp32, heldout):
    items = _items(heldout, 30)
    with wildguard_lite.load(toy_onnx_fp32, threads=2, one_pass=False) as clf:
        sequential = clf.classify(items)
    with wildguard_lite.load(toy_onnx_fp32, threads=2) as clf:
        for a, b in zip(clf.classify(items), sequential):
            _close(a, b, tol=1e-4)
        item = next(i for i in items if len(i.get("response", "")) > 60)
        stream = clf.stream(item["prompt"], interval=4)
        for chunk in _chunks(item["response"], random.Random(1)):
            stream.feed(chunk)
        _close(stream.close(), clf.classify_one(item["prompt"], item["response"]), tol=1e-4)
