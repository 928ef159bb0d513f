"""Every value checked before anything is queued: timeouts, cancel objects, a closed
classifier's streams, the KV cache's size, serve's --workers and the guardrail's call id."""

import asyncio
import threading

import pytest

from server_fakes import MarkerBackend, build_tokenizer
from wildguard_lite.errors import ClassifierClosedError, InvalidInputError
from wildguard_lite.runtime import Classifier


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


class Counting(MarkerBackend):
    calls = 0

    def next_logits(self, ids):
        self.calls += 1
        return super().next_logits(ids)


@pytest.fixture
def clf(tokenizer):
    return Classifier(Counting(tokenizer), tokenizer)


BAD_TIMEOUTS = [
    (float("nan"), InvalidInputError, "finite number of seconds"),
    (-1, InvalidInputError, "finite number of seconds"),
    (float("inf"), InvalidInputError, "finite number of seconds"),
    (float("-inf"), InvalidInputError, "finite number of seconds"),
    ("5", TypeError, "number of seconds or None, got str"),
    (True, TypeError, "got bool"),
]
BAD_CANCELS = [
    (True, "got bool"),
    (object(), "got object"),
    ("yes", "got str"),
    (asyncio.Event(), "got Event"),  # asyncio's Event is not thread-safe: not a threading.Event
]


@pytest.mark.parametrize("timeout, error, message", BAD_TIMEOUTS)
def test_classify_refuses_bad_timeouts_before_running(clf, timeout, error, message):
    with pytest.raises(error, match=message):
        clf.classify([{"prompt": "hi"}], timeout=timeout)
    assert clf.backend.calls == 0
    assert clf.classify([{"prompt": "hi"}], timeout=5)[0]["prompt_harmfulness"] == "unharmful"


@pytest.mark.parametrize("timeout, error, message", BAD_TIMEOUTS)
def test_aclassify_refuses_bad_timeouts_before_queuing(clf, timeout, error, message):
    with pytest.raises(error, match=message):
        asyncio.run(clf.aclassify([{"prompt": "hi"}], timeout=timeout))
    assert clf.backend.calls == 0


@pytest.mark.parametrize("timeout, error, message", BAD_TIMEOUTS)
@pytest.mark.parametrize("call", ["feed", "close"])
def test_stream_refuses_bad_timeouts_and_keeps_its_text(clf, timeout, error, message, call):
    stream = clf.stream("q", interval=1)
    with pytest.raises(error, match=message):
        if call == "feed":
            stream.feed("some reply text", timeout=timeout)
        else:
            stream.close(timeout=timeout)
    assert stream.response == "" and clf.backend.calls == 0  # the refused chunk did not join
    assert stream.feed("some reply text", timeout=5) is not None


@pytest.mark.parametrize("cancel, message", BAD_CANCELS)
def test_cancel_must_be_a_threading_event(clf, cancel, message):
    with pytest.raises(TypeError, match=f"cancel must be a threading.Event.*{message}"):
        clf.classify([{"prompt": "hi"}], cancel=cancel)
    with pytest.raises(TypeError, match=message):
        clf.stream("q").feed("text", cancel=cancel)
    assert clf.backend.calls == 0
    # Nothing was left queued: the next call runs at once.
    assert clf.classify([{"prompt": "hi"}], cancel=threading.Event())[0]["is_parsing_error"] is False


@pytest.mark.parametrize(
    "call",
    [
        lambda clf, stream: clf.stream("q"),
        lambda clf, stream: stream.feed("a"),  # short: no check would run, still refused
        lambda clf, stream: stream.feed(""),
        lambda clf, stream: stream.close(),
        lambda clf, stream: clf.classify([{"prompt": "hi"}]),
        lambda clf, stream: clf.plan([{"prompt": "hi"}]),
    ],
)
def test_a_closed_classifier_refuses_every_call(clf, call):
    stream = clf.stream("q")
    clf.close()
    with pytest.raises(ClassifierClosedError, match="was closed"):
        call(clf, stream)


@pytest.mark.parametrize(
    "kv_tokens, per_token, memory, refused",
    [
        (2**31 - 1, 131072, 64 << 30, True),  # WildGuard's 128 KiB a token: 256 TiB
        (8192, 131072, 64 << 30, False),  # the default two contexts: 1 GiB
        (8192, 131072, 512 << 20, True),  # ... on a 512 MiB machine
    ],
)
def test_kv_cache_larger_than_memory_is_refused_with_the_figures(monkeypatch, kv_tokens, per_token, memory, refused):
    import os

    from wildguard_lite.backends.llama import check_kv_memory

    pages = {"SC_PHYS_PAGES": memory // 4096, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    if refused:
        with pytest.raises(InvalidInputError, match=r"needs a [\d.]+ GiB KV cache \(131072 bytes per token, f16"):
            check_kv_memory(kv_tokens, per_token, 4096)
    else:
        check_kv_memory(kv_tokens, per_token, 4096)


@pytest.mark.parametrize(
    "workers, ok",
    [(1, True), (256, True), (257, False), (100_000, False), (0, False)],
)
def test_serve_workers_bound(workers, ok):
    pytest.importorskip("fastapi")
    from wildguard_lite.server import ServeSettings

    if ok:
        assert ServeSettings(workers=workers).workers == workers
    else:
        with pytest.raises(InvalidInputError, match="--workers must be from 1 to 256"):
            ServeSettings(workers=workers)


@pytest.mark.parametrize(
    "call_id, status, message",
    [
        ("c" * 256, 200, None),
        ("c" * 257, 422, "at most 256 characters, got 257 characters"),
        (12, 422, "got int"),
        (None, 200, None),
    ],
)
def test_guardrail_call_id_limit_is_enforced(tokenizer, call_id, status, message):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from server_fakes import marker_app

    with TestClient(marker_app(tokenizer)) as client:
        body = {"input_type": "request", "texts": ["hello"], "litellm_call_id": call_id}
        reply = client.post("/beta/litellm_basic_guardrail_api", json=body)
    assert reply.status_code == status, reply.text
    if message:
        assert message in reply.json()["error"]["message"]
