"""`wildguard-lite serve`: endpoints, every error code, admission, shutdown, the prefix cache.

Most tests run the app on a fake backend that answers from a queue of scripted yes/no
answers (and can be held at a gate to fill the queue deterministically); the rest run it on
the toy GGUF.
"""

import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

with warnings.catch_warnings():  # starlette's TestClient warns about httpx on some versions
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

import wildguard_lite
from server_fakes import build_tokenizer
from wildguard_lite.backends.base import Backend
from wildguard_lite.gguf_meta import read_gguf_info
from wildguard_lite.config import RuntimeConfig
from wildguard_lite.runtime import Classifier
from wildguard_lite.server import ServeSettings, create_app
from wildguard_lite.server.moderation import OPENAI_CATEGORIES
from wildguard_lite.tokenization import WildGuardTokenizer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
KEY = "k" * 32


@pytest.fixture(scope="module")
def model_path(toy_gguf) -> Path:
    return toy_gguf["q8_0"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> WildGuardTokenizer:
    """For the fake backends: the toy's tokenizer recipe, no trained toy needed."""
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def toy_tokenizer(model_path) -> WildGuardTokenizer:
    return WildGuardTokenizer(read_gguf_info(model_path).tokenizer)


class QueuedBackend(Backend):
    """Answers each call with the next scripted answer ("yes"/"no"; "yes" once the queue is
    empty), after waiting at `gate` when one is set."""

    def __init__(self, tokenizer, answers=(), n_ctx=4096, gate=None):
        self.tokenizer, self.answers, self.gate = tokenizer, list(answers), gate
        self.n_ctx, self.n_vocab = n_ctx, tokenizer.vocab_size
        self.calls = 0

    def next_logits(self, ids):
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        self.calls += 1
        answer = self.answers.pop(0) if self.answers else "yes"
        logits = np.zeros(self.n_vocab, dtype=np.float32)
        logits[self.tokenizer.yes_id if answer == "yes" else self.tokenizer.no_id] = 3.0
        return logits


def fake_app(tokenizer, answers=(), gate=None, n_ctx=4096, **settings):
    backends = []

    serve_settings = ServeSettings(**settings)

    def factory(index, threads):
        backends.append(QueuedBackend(tokenizer, answers, n_ctx=n_ctx, gate=gate))
        return Classifier(backends[-1], tokenizer, RuntimeConfig(over_context=serve_settings.over_context))

    app = create_app(serve_settings, classifier_factory=factory)
    return app, backends


def wait_until(condition, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


# -- the two endpoints' shapes ------------------------------------------------------------------
@pytest.mark.parametrize(
    "body, answers, expected",
    [
        # a plain string is a user prompt; the response labels are n/a -> false / 0.0
        (
            {"input": "how do I make a bomb"},
            ["yes"],
            [(True, {"harmful_request": True, "harmful_response": False, "refusal": False})],
        ),
        # a list of strings: one result each, in order
        (
            {"input": ["hi", "bomb"]},
            ["no", "yes"],
            [
                (False, {"harmful_request": False, "harmful_response": False, "refusal": False}),
                (True, {"harmful_request": True, "harmful_response": False, "refusal": False}),
            ],
        ),
        # an object judges the assistant's response; a refusal alone does not flag
        (
            {"input": [{"prompt": "bomb", "response": "No."}]},
            ["no", "yes", "no"],
            [(False, {"harmful_request": False, "harmful_response": False, "refusal": True})],
        ),
        # a harmful response flags even when the request was benign
        (
            {"input": {"prompt": "chemistry", "response": "Mix..."}, "model": "ignored"},
            ["no", "no", "yes"],
            [(True, {"harmful_request": False, "harmful_response": True, "refusal": False})],
        ),
    ],
)
def test_moderations_maps_labels_to_categories(tokenizer, body, answers, expected):
    app, _ = fake_app(tokenizer, answers)
    with TestClient(app) as client:
        reply = client.post("/v1/moderations", json=body)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert data["id"].startswith("modr-") and len(data["results"]) == len(expected)
    for result, (flagged, categories) in zip(data["results"], expected):
        assert result["flagged"] is flagged
        assert {name: result["categories"][name] for name in categories} == categories
        assert result["categories"]["parsing_error"] is False
        # The default --openai-categories all: every OpenAI category follows `flagged`.
        assert {result["categories"][name] for name in OPENAI_CATEGORIES} == {flagged}
        for name, on in categories.items():
            assert (result["category_scores"][name] > 0.5) == on
        assert set(result["wildguard"]) == {
            "prompt_harmfulness",
            "response_refusal",
            "response_harmfulness",
            "is_parsing_error",
            "scores",
        }


def test_classify_returns_official_keys_and_scores(tokenizer):
    app, backends = fake_app(tokenizer, ["yes", "no", "yes", "no"])
    items = [{"prompt": "p", "response": "r"}, {"prompt": "q", "response": None}]
    with TestClient(app) as client:
        reply = client.post("/v1/classify", json={"items": items})
    assert reply.status_code == 200, reply.text
    first, second = reply.json()["results"]
    assert (first["prompt_harmfulness"], first["response_refusal"], first["response_harmfulness"]) == (
        "harmful",
        "compliance",
        "harmful",
    )
    assert (second["prompt_harmfulness"], second["response_refusal"]) == ("unharmful", None)
    assert second["scores"]["prompt_harmfulness"] < 0.5 < first["scores"]["prompt_harmfulness"]
    assert backends[0].calls == 4  # three labels, then one for the prompt-only item


# -- every error code ---------------------------------------------------------------------------
_CHUNKED = iter([b'{"items": [{"prompt": "', b"x" * 3000, b'"}]}'])


@pytest.mark.parametrize(
    "method, path, kwargs, status, message",
    [
        # malformed JSON: where it broke
        ("post", "/v1/classify", {"content": b'{"items": ['}, 400, "not valid JSON: .* at line 1 column"),
        # an empty body
        ("post", "/v1/moderations", {"content": b""}, 400, "request body is empty"),
        # bytes that are not UTF-8
        ("post", "/v1/moderations", {"content": b'{"input": "\xff"}'}, 400, "not UTF-8"),
        # the body is not an object
        ("post", "/v1/moderations", {"json": ["hi"]}, 422, "must be a JSON object with 'input'"),
        # OpenAI's field is missing
        ("post", "/v1/moderations", {"json": {"text": "hi"}}, 422, "missing required field 'input'"),
        # a number where text goes, with its position
        ("post", "/v1/moderations", {"json": {"input": ["ok", 3]}}, 422, r"input\[1\]: must be a string"),
        # an unknown field in an exchange object
        (
            "post",
            "/v1/moderations",
            {"json": {"input": [{"prompt": "a", "answer": "b"}]}},
            422,
            r"input\[0\]: unknown field\(s\) answer",
        ),
        # an empty list
        ("post", "/v1/moderations", {"json": {"input": []}}, 422, "'input' is empty"),
        # native: items missing
        ("post", "/v1/classify", {"json": {"input": "x"}}, 422, 'must be {"items"'),
        # native: prompt of the wrong type
        (
            "post",
            "/v1/classify",
            {"json": {"items": [{"prompt": "a"}, {"prompt": 1}]}},
            422,
            r"items\[1\]: field 'prompt' must be a string",
        ),
        # native: prompt missing
        (
            "post",
            "/v1/classify",
            {"json": {"items": [{"response": "a"}]}},
            422,
            r"items\[0\]: missing required field 'prompt'",
        ),
        # more items than --max-items
        ("post", "/v1/classify", {"json": {"items": [{"prompt": "a"}] * 5}}, 413, "the limit is 4 per request"),
        # a body over the limit, declared by Content-Length
        ("post", "/v1/moderations", {"json": {"input": "x" * 5000}}, 413, "the limit is 2048"),
        # a body over the limit, streamed without Content-Length
        ("post", "/v1/classify", {"content": _CHUNKED}, 413, "exceeds the limit of 2048"),
        # input longer than the context with --over-context error: the token count and the limit
        (
            "post",
            "/v1/classify",
            {"json": {"items": [{"prompt": "word " * 300}]}},
            413,
            r"item 0: input is \d+ tokens but the context holds 256",
        ),
        # no such endpoint
        ("get", "/v2/anything", {}, 404, "no endpoint /v2/anything"),
        # the wrong method
        ("get", "/v1/moderations", {}, 405, "method GET is not allowed"),
    ],
)
def test_client_errors_get_clear_4xx(tokenizer, method, path, kwargs, status, message):
    app, _ = fake_app(tokenizer, n_ctx=256, max_items=4, max_body_bytes=2048, over_context="error")
    with TestClient(app, raise_server_exceptions=True) as client:
        reply = getattr(client, method)(path, **kwargs)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == str(status)
    import re

    assert re.search(message, error["message"]), error["message"]
    if status == 413 and "tokens" in message:
        assert error["n_tokens"] > error["limit"] == 256


@pytest.mark.parametrize(
    "headers, status",
    [
        ({}, 401),  # no key
        ({"Authorization": "Bearer wrong-key-wrong-key-wrong"}, 401),  # wrong key
        ({"Authorization": KEY}, 401),  # the key without the Bearer scheme
        ({"Authorization": f"Bearer {KEY}"}, 200),  # the right key
    ],
)
def test_api_key(tokenizer, headers, status):
    app, _ = fake_app(tokenizer, api_key=KEY)
    with TestClient(app) as client:
        assert client.post("/v1/moderations", json={"input": "hi"}, headers=headers).status_code == status
        assert client.get("/metrics", headers=headers).status_code == status
        assert client.get("/health").status_code == 200  # health stays open for HEALTHCHECK


def test_full_queue_answers_429_with_retry_after(tokenizer):
    gate = threading.Event()
    app, _ = fake_app(tokenizer, gate=gate, workers=1, max_queue=1)
    with TestClient(app) as client:
        pool = app.state.runtime["pool"]
        replies = []
        senders = [
            threading.Thread(target=lambda: replies.append(client.post("/v1/moderations", json={"input": "a"})))
            for _ in range(2)
        ]
        for sender in senders:
            sender.start()
        wait_until(lambda: pool.running == 1 and pool.queued == 1)  # one runs, one waits
        rejected = client.post("/v1/moderations", json={"input": "b"})
        assert client.get("/health").json()["queue_depth"] == 1
        gate.set()
        for sender in senders:
            sender.join()
    assert rejected.status_code == 429
    assert int(rejected.headers["Retry-After"]) >= 1
    assert "queue (1) is full" in rejected.json()["error"]["message"]
    assert [r.status_code for r in replies] == [200, 200]  # the admitted ones finish


def test_request_timeout_fails_closed_and_frees_the_slot(tokenizer):
    # Past --timeout the answer is a flagged verdict (fail closed, server/budget.py), not a 504.
    gate = threading.Event()
    app, _ = fake_app(tokenizer, gate=gate, workers=1, max_queue=0, request_timeout_s=0.2)
    with TestClient(app) as client:
        slow = client.post("/v1/classify", json={"items": [{"prompt": "a"}]})
        gate.set()
        wait_until(lambda: app.state.runtime["pool"].running == 0)
        after = client.post("/v1/classify", json={"items": [{"prompt": "a"}]})
    assert slow.status_code == 200
    (result,) = slow.json()["results"]
    assert result["is_parsing_error"] and result["not_judged"]["reason"] == "deadline"
    assert "within 0.2 s" in result["not_judged"]["message"]
    assert after.status_code == 200 and "not_judged" not in after.json()["results"][0]


def test_metrics_count_requests_errors_and_queue(tokenizer):
    app, _ = fake_app(tokenizer)
    with TestClient(app) as client:
        client.post("/v1/moderations", json={"input": "a"})
        client.post("/v1/moderations", json={"input": "b"})
        client.post("/v1/moderations", content=b"{")
        text = client.get("/metrics").text
    assert 'wildguard_requests_total{endpoint="/v1/moderations",status="200"} 2' in text
    assert 'wildguard_requests_total{endpoint="/v1/moderations",status="400"} 1' in text
    assert 'wildguard_errors_total{type="invalid_json"} 1' in text
    assert 'wildguard_request_duration_seconds_count{endpoint="/v1/moderations"} 3' in text
    assert "wildguard_queue_depth 0" in text and "wildguard_items_total 2" in text


def test_graceful_shutdown_finishes_requests_in_flight(tokenizer):
    import httpx
    import uvicorn

    gate = threading.Event()
    app, _ = fake_app(tokenizer, gate=gate)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run)
    thread.start()
    wait_until(lambda: server.started, 10)
    port = server.servers[0].sockets[0].getsockname()[1]
    replies = []
    sender = threading.Thread(
        target=lambda: replies.append(
            httpx.post(f"http://127.0.0.1:{port}/v1/moderations", json={"input": "a"}, timeout=10)
        )
    )
    sender.start()
    wait_until(lambda: app.state.runtime["pool"] is not None and app.state.runtime["pool"].running == 1)
    server.should_exit = True  # what SIGTERM/SIGINT do
    time.sleep(0.2)
    gate.set()
    sender.join(10)
    thread.join(10)
    assert not thread.is_alive()
    assert replies and replies[0].status_code == 200


# -- on the toy GGUF ----------------------------------------------------------------------------
@pytest.mark.slow
def test_concurrent_requests_on_the_toy_match_sequential_results(toy_gguf, heldout):
    items = [
        {"prompt": r["prompt"], **({"response": r["response"]} if r.get("response") else {})} for r in heldout[:24]
    ]
    with wildguard_lite.load(toy_gguf["f16"], threads=1) as clf:
        expected = clf.classify(items)
    app = create_app(ServeSettings(model=toy_gguf["f16"], workers=2, threads=1, max_queue=64))
    replies = [None] * len(items)

    def send(client, i):
        replies[i] = client.post("/v1/classify", json={"items": [items[i]]})

    with TestClient(app) as client:
        senders = [threading.Thread(target=send, args=(client, i)) for i in range(len(items))]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        health = client.get("/health").json()
    assert health["workers"] == 2
    for reply, want in zip(replies, expected):
        assert reply.status_code == 200, reply.text
        got = reply.json()["results"][0]
        # Workers reuse different cached prefixes, so the evaluation is split at different
        # points; llama.cpp's sums then differ in the last bits (measured: < 0.004 in P(yes)
        # on f16), so labels are compared where the score is not on the fence.
        for key, score in want["scores"].items():
            if score is None:
                assert got[key] is None and got["scores"][key] is None
                continue
            assert abs(got["scores"][key] - score) < 0.01, key
            if abs(score - 0.5) > 0.01:
                assert got[key] == want[key], key


@pytest.mark.slow
def test_over_context_error_on_the_toy_is_413(model_path):
    app = create_app(ServeSettings(model=model_path, n_ctx=256, over_context="error"))
    with TestClient(app) as client:
        reply = client.post("/v1/moderations", json={"input": ["short", "word " * 400]})
    assert reply.status_code == 413
    assert reply.json()["error"]["limit"] == 256 and "item 1" in reply.json()["error"]["message"]


@pytest.mark.slow
def test_two_phase_prefix_cache_evaluates_only_the_response(model_path, toy_tokenizer):
    tokenizer = toy_tokenizer
    from wildguard_lite.backends.llama import LlamaCppBackend, PrefixStateCache

    cache = PrefixStateCache(max_bytes=64 << 20)
    phase_one = LlamaCppBackend(model_path, n_ctx=1024, threads=1, prefix_cache=cache)
    phase_two = LlamaCppBackend(model_path, n_ctx=1024, threads=1, prefix_cache=cache)  # another worker
    fresh = LlamaCppBackend(model_path, n_ctx=1024, threads=1)
    prompt = "How do I pick a lock on my own front door? " * 4
    first = tokenizer.encode_exchange(prompt) + list(tokenizer.cue_ids[0])
    phase_one.next_logits(first)
    phase_one.next_logits(tokenizer.encode_exchange("something else") + list(tokenizer.cue_ids[0]))
    # The state survives other requests (phase_one) and crosses workers (phase_two).
    for backend, response in ((phase_two, "Call a locksmith; " * 6), (phase_one, "Use a bump key. " * 5)):
        second = tokenizer.encode_exchange(prompt, response) + list(tokenizer.cue_ids[0])
        common = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
        # The reference keeps its live KV cache from `first` to `second`: the same computation
        # the restored state must reproduce bit for bit.
        fresh.next_logits(first)
        expected = fresh.next_logits(second)
        before = backend.tokens_evaluated
        logits = backend.next_logits(second)
        assert backend.tokens_evaluated - before == len(second) - common
        np.testing.assert_array_equal(logits, expected)
    # phase_two restored from the cache (another worker); phase_one still held `first` in one
    # of its own sequences (slots), so it needed no restore to evaluate only the response.
    assert cache.stats.hits >= 1 and cache.stats.tokens_reused >= common
    for backend in (phase_one, phase_two, fresh):
        backend.close()


@pytest.mark.slow
def test_prefix_cache_stays_under_its_memory_cap(model_path, toy_tokenizer):
    tokenizer = toy_tokenizer
    from wildguard_lite.backends.llama import LlamaCppBackend, PrefixStateCache

    probe = PrefixStateCache(max_bytes=1 << 30)
    backend = LlamaCppBackend(model_path, n_ctx=512, threads=1, prefix_cache=probe)
    backend.next_logits(tokenizer.encode_exchange("one"))
    one_state = probe.bytes
    cache = PrefixStateCache(max_bytes=int(one_state * 2.5))
    backend.prefix_cache = cache
    for i in range(6):
        backend.next_logits(tokenizer.encode_exchange(f"prompt number {i}"))
        assert cache.bytes <= cache.max_bytes
    backend.close()
    assert len(cache) == 2 and cache.stats.evictions == 4


# -- the CLI and the import boundary ------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "missing.gguf"], "no such model file"),  # the model is not there
        (["--model", "{model}", "--workers", "0"], "--workers must be from 1 to 256"),  # no workers
        (["--model", "{model}", "--api-key-file", "{empty}"], "the file is empty"),  # empty key file
        (["--model", "{model}", "--max-queue", "-1"], "--max-queue must be 0 or more"),  # negative queue
        (["--model", "{model}", "--threads", "50000"], "threads must be between 1 and 512"),  # would abort llama.cpp
        (["--model", "{model}", "--body-timeout", "0"], "--body-timeout must be positive"),  # no time to send
    ],
)
def test_serve_cli_refuses_bad_options_in_one_line(tmp_path, args, message):
    empty = tmp_path / "key"
    empty.write_text("\n")
    model = tmp_path / "model.gguf"  # the options are checked before the model is opened
    model.write_bytes(b"GGUF")
    argv = [a.format(model=model, empty=empty) for a in args]
    proc = subprocess.run(
        [sys.executable, "-m", "wildguard_lite.cli.serve", *argv], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and message in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_cli_serves_on_loopback_by_default(model_path, tmp_path):
    import httpx

    key = tmp_path / "key"
    key.write_text(KEY + "\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wildguard_lite.cli.serve",
            "--model",
            str(model_path),
            "--port",
            "0",
            "--api-key-file",
            str(key),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        address = None
        for line in proc.stderr:  # uvicorn logs the address it bound
            if "Uvicorn running on" in line:
                address = line.split("running on ")[1].split()[0]
                break
        assert address is not None and address.startswith("http://127.0.0.1:")
        reply = httpx.post(
            f"{address}/v1/moderations", json={"input": "hello"}, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
        )
        assert reply.status_code == 200 and len(reply.json()["results"]) == 1
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=30)[1]
    # SIGTERM is a clean shutdown; uvicorn re-raises the signal once it is done.
    assert "Application shutdown complete" in rest and "Traceback" not in rest
    assert proc.returncode in (0, -15)


def test_package_import_does_not_pull_the_server_stack():
    code = (
        "import sys, wildguard_lite, wildguard_lite.cli, wildguard_lite.cli.serve;"
        "heavy = [m for m in ('fastapi', 'uvicorn', 'starlette', 'torch', 'transformers') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
