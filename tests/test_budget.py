"""Decide up front, fail closed (server/budget.py): what cannot be judged within --timeout is
answered 200 and flagged on every moderation endpoint, with the reason in `not_judged`; never
an error status that fail-open clients pass. Fake engines decide the verdicts and the speed."""

import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from server_fakes import HARMFUL, MarkerBackend, build_tokenizer, running  # noqa: E402
from wildguard_lite.backends.base import Engine  # noqa: E402
from wildguard_lite.runtime import Classifier  # noqa: E402
from wildguard_lite.server import ServeSettings, create_app  # noqa: E402
from wildguard_lite.server.budget import CALIBRATION_DISCOUNT, calibrate  # noqa: E402
from wildguard_lite.server.pool import RateEstimate  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
GUARDRAIL = "/beta/litellm_basic_guardrail_api"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


class CountingBackend(MarkerBackend):
    """MarkerBackend that counts its calls, optionally waits at a gate or sleeps per call."""

    def __init__(self, tokenizer, gate=None, seconds=0.0):
        super().__init__(tokenizer)
        self.gate, self.seconds, self.calls = gate, seconds, 0

    def next_logits(self, ids):
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        time.sleep(self.seconds)
        self.calls += 1
        return super().next_logits(ids)


def app_with(tokenizer, rate=None, gate=None, seconds=0.0, **settings):
    backend = CountingBackend(tokenizer, gate, seconds)
    app = create_app(
        ServeSettings(**settings),
        classifier_factory=lambda index, threads: Classifier(backend, tokenizer),
        tokens_per_second=rate,
    )
    return app, backend


def words(n: int) -> str:
    return " ".join(f"river{i % 50} mill" for i in range(n))


def sized(classifier, tokens: int) -> str:
    """Words whose plan (template and answer room included) is about `tokens` long."""
    n = 1
    while classifier.plan_tokens(classifier.plan([{"prompt": words(n)}])) < tokens:
        n += max(1, n // 8)
    return words(n)


def hold_a_worker(base: str, pool, text: str, headers: dict | None = None) -> threading.Thread:
    """A /v1/classify call of `text` in a thread, returned once a worker runs it."""
    holder = threading.Thread(
        target=httpx.post,
        args=(f"{base}/v1/classify",),
        kwargs={"json": {"items": [{"prompt": text}]}, "headers": headers or {}},
    )
    holder.start()
    deadline = time.monotonic() + 5
    while pool.running == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return holder


def post(client, endpoint: str, text: str):
    if endpoint == "/v1/moderations":
        return client.post(endpoint, json={"input": text})
    if endpoint == "/v1/classify":
        return client.post(endpoint, json={"items": [{"prompt": text}]})
    return client.post(endpoint, json={"input_type": "request", "texts": [text]})


def blocked(endpoint: str, body: dict) -> bool:
    if endpoint == "/v1/moderations":
        return body["results"][0]["flagged"]
    if endpoint == "/v1/classify":
        return body["results"][0]["is_parsing_error"]
    return body["action"] == "BLOCKED"


def result_of(endpoint: str, body: dict) -> dict:
    if endpoint == "/v1/moderations":
        return body["results"][0]["wildguard"]
    if endpoint == "/v1/classify":
        return body["results"][0]
    return body["wildguard"][0]


ENDPOINTS = ["/v1/moderations", "/v1/classify", GUARDRAIL]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_too_long_for_the_deadline_is_flagged_at_once_without_running(tokenizer, endpoint):
    # 200 tokens/s and 1 s: ~700 tokens cannot be judged in time; a short text (~110 with the
    # template) can.
    app, backend = app_with(tokenizer, rate=200, request_timeout_s=1)
    with TestClient(app) as client:
        long_reply = post(client, endpoint, words(300))
        assert backend.calls == 0  # decided from the token count: the engine never ran
        short_reply = post(client, endpoint, "hello there")
    assert long_reply.status_code == 200, long_reply.text
    body = long_reply.json()
    assert blocked(endpoint, body)
    reason = result_of(endpoint, body)["not_judged"]
    assert reason["reason"] == "too_long" and "tokens/s" in reason["message"]
    if endpoint == GUARDRAIL:
        assert "not judged" in body["blocked_reason"]
    assert short_reply.status_code == 200 and not blocked(endpoint, short_reply.json())
    assert "not_judged" not in result_of(endpoint, short_reply.json())


@pytest.mark.parametrize(
    "endpoint, status",
    [("/v1/moderations", 413), ("/v1/classify", 413), (GUARDRAIL, 413)],
)
def test_over_budget_error_answers_an_error_instead(tokenizer, endpoint, status):
    app, backend = app_with(tokenizer, rate=100, request_timeout_s=1, over_budget="error")
    with TestClient(app) as client:
        reply = post(client, endpoint, words(300))
        metrics = client.get("/metrics").text
    assert reply.status_code == status and reply.json()["error"]["type"] == "input_too_long"
    assert backend.calls == 0
    assert 'wildguard_not_judged_total{reason="too_long"} 1' in metrics


@pytest.mark.parametrize("mode, status", [("flag", 200), ("error", 503)])
def test_a_queue_too_deep_for_the_deadline_is_decided_up_front(tokenizer, mode, status):
    # One worker held busy by ~2,600 tokens at 1,000 tokens/s against a 3 s deadline: a
    # 600-token request behind it cannot finish in time, although alone it would.
    gate = threading.Event()
    app, backend = app_with(tokenizer, rate=1000, gate=gate, request_timeout_s=3, workers=1, over_budget=mode)
    with running(app) as base:
        classifier = app.state.runtime["pool"].classifier
        first, second = sized(classifier, 2600), sized(classifier, 600)
        holder = hold_a_worker(base, app.state.runtime["pool"], first)
        behind = httpx.post(f"{base}/v1/moderations", json={"input": second}, timeout=10)
        calls = backend.calls
        gate.set()
        holder.join()
    assert behind.status_code == status, behind.text
    assert calls == 0
    if mode == "flag":
        result = behind.json()["results"][0]
        assert result["flagged"] and result["wildguard"]["not_judged"]["reason"] == "queue_too_deep"
    else:
        assert behind.headers["Retry-After"].isdigit()


@pytest.mark.parametrize("mode, status", [("flag", 200), ("error", 504)])
def test_a_deadline_passed_mid_way_fails_closed_and_keeps_what_was_judged(tokenizer, mode, status):
    # No rate known (nothing refused up front); 20 ms per engine call, 0.5 s deadline: the first
    # item is judged, the 40 exchanges after it (120 calls) are not.
    app, backend = app_with(tokenizer, seconds=0.02, request_timeout_s=0.5, over_budget=mode)
    items = [{"prompt": f"{HARMFUL} now"}] + [{"prompt": f"q {i}", "response": f"a {i}"} for i in range(40)]
    with running(app) as base:
        reply = httpx.post(f"{base}/v1/classify", json={"items": items}, timeout=30)
    assert reply.status_code == status, reply.text
    assert backend.calls < 3 * 40  # the rest was stopped
    if mode == "flag":
        results = reply.json()["results"]
        assert results[0]["prompt_harmfulness"] == "harmful" and "not_judged" not in results[0]
        assert results[-1]["is_parsing_error"] and results[-1]["not_judged"]["reason"] == "deadline"


def test_the_rate_is_measured_from_the_engine(tokenizer):
    # 5 ms a call (a few hundred tokens each): the pool's estimate is the engine's real tokens
    # per second (unseeded: a given factory's engine is measured by its first requests).
    app, backend = app_with(tokenizer, seconds=0.005)
    with TestClient(app) as client:
        before = backend.tokens_evaluated
        start = time.perf_counter()
        reply = client.post("/v1/classify", json={"items": [{"prompt": words(100), "response": "ok"}] * 20})
        seconds = time.perf_counter() - start
        rate = app.state.runtime["pool"].rate
    assert reply.status_code == 200
    measured = (backend.tokens_evaluated - before) / seconds
    assert rate.samples >= 1 and 0.3 * measured < rate.value < 3 * measured


@pytest.mark.parametrize(
    "seed, samples, expected",
    [
        (None, [], None),  # unmeasured: nothing is refused up front
        (100.0, [], 100.0),
        (float("nan"), [], None),  # a seed that is not a rate is no seed
        (None, [(500, 1.0)], 500.0),  # the first sample replaces "unknown"
        # tokens over seconds, the seed's second weighing 0.5 ** (1 / 10) after a 1 s sample
        (100.0, [(500, 1.0)], (100 * 0.5**0.1 + 500) / (0.5**0.1 + 1)),
        # a 20 s run of a long input outweighs the seed: close to its own 2,500 tokens/s
        (100.0, [(50_000, 20.0)], (100 * 0.25 + 50_000) / 20.25),
        (100.0, [(500, 0.01)], 100.0),  # too short a stretch says nothing
        (100.0, [(0, 1.0)], 100.0),  # nor one that evaluated nothing
    ],
)
def test_rate_estimate(seed, samples, expected):
    rate = RateEstimate(seed)
    for tokens, seconds in samples:
        rate.sample(tokens, seconds)
    assert rate.value == (None if expected is None else pytest.approx(expected))


def test_calibrate_measures_one_short_call(tokenizer):
    backend = CountingBackend(tokenizer, seconds=0.01)
    rate, seconds = calibrate(Classifier(backend, tokenizer))
    assert backend.calls == 1 and rate is not None and 0.01 <= seconds < 5
    # the call's own rate, discounted to err on the slow side
    assert rate == pytest.approx(backend.tokens_evaluated / seconds / CALIBRATION_DISCOUNT)


# -- fair share: per-client limits ---------------------------------------------------------------
@pytest.mark.parametrize(
    "limits, first_tokens, message",
    [
        ({"client_max_requests": 1}, 200, "--client-max-requests 1"),
        # the first request is admitted however large; the next one is over the client's tokens
        ({"client_max_tokens": 500}, 2000, "--client-max-tokens 500"),
    ],
)
def test_per_client_limits_answer_429_to_that_client_only(tokenizer, limits, first_tokens, message):
    gate = threading.Event()
    app, _ = app_with(tokenizer, gate=gate, workers=4, **limits)
    with running(app) as base:
        classifier = app.state.runtime["pool"].classifier
        pool = app.state.runtime["pool"]
        holder = hold_a_worker(base, pool, sized(classifier, first_tokens), {"x-api-key": "a"})
        same = httpx.post(f"{base}/v1/moderations", json={"input": "hi"}, headers={"x-api-key": "a"}, timeout=10)
        other = threading.Thread(
            target=lambda: results.append(
                httpx.post(f"{base}/v1/moderations", json={"input": "hi"}, headers={"x-api-key": "b"}, timeout=10)
            )
        )
        results: list = []
        other.start()
        time.sleep(0.2)
        gate.set()
        holder.join()
        other.join()
        again = httpx.post(f"{base}/v1/moderations", json={"input": "hi"}, headers={"x-api-key": "a"}, timeout=10)
    assert same.status_code == 429 and message in same.json()["error"]["message"]
    assert same.headers["Retry-After"].isdigit()
    assert results[0].status_code == 200  # another client is not limited by the first one's work
    assert again.status_code == 200  # the client's counts were released with its request


class ConcurrentMarker(Engine):
    """The marker engine with the shape of llama.cpp's (several calls at once), recording each
    call's length: a long input must reach it in pieces."""

    slots = 8

    def __init__(self, tokenizer):
        self.marker = MarkerBackend(tokenizer)
        self.tokenizer, self.n_ctx, self.n_vocab = tokenizer, self.marker.n_ctx, self.marker.n_vocab
        self.lengths: list[int] = []

    def logits_at(self, ids, positions, interrupt=None):
        self.lengths.append(len(ids))
        cues = [list(c) for c in self.tokenizer.cue_ids]
        if not any(list(ids[p + 1 - len(c) : p + 1]) == c for p in positions for c in cues):
            return [np.zeros(self.n_vocab, dtype=np.float32) for _ in positions]  # a piece: read nowhere
        return self.marker.logits_at(ids, positions)


def test_a_long_input_reaches_a_concurrent_engine_in_pieces_with_the_same_verdict(tokenizer):
    from wildguard_lite.generation import INTERLEAVE_TOKENS

    text = words(150) + f" {HARMFUL} " + words(150)  # ~2,200 tokens: one input, no windows
    plain = Classifier(CountingBackend(tokenizer), tokenizer).classify([{"prompt": text}])[0]
    backend = ConcurrentMarker(tokenizer)
    pieces = Classifier(backend, tokenizer).classify([{"prompt": text}])[0]
    assert pieces == plain and pieces["prompt_harmfulness"] == "harmful"
    n = len(tokenizer.encode_exchange(text))
    assert n > 4 * INTERLEAVE_TOKENS
    # Pieces of INTERLEAVE_TOKENS, each a prefix of the next; then the input with its cue.
    *fed, last = backend.lengths
    assert fed == list(range(INTERLEAVE_TOKENS, n - INTERLEAVE_TOKENS, INTERLEAVE_TOKENS))
    assert last > n
    # A short input is one call, as before.
    backend.lengths.clear()
    Classifier(backend, tokenizer).classify([{"prompt": "hello"}])
    assert len(backend.lengths) == 1
