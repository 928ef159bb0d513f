"""`serve` stops abandoned work: a client that disconnects, or a request past `--timeout`,
cancels its classification in the engine, so its worker is free for the next request; the
aborts are counted in /metrics.

One worker over a fake engine whose calls take a few milliseconds each: the abandoned request
needs many calls, so whether its work stopped shows in the engine's call count once the next
request has been answered (before, that request waited for all of it).
"""

import json
import socket
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from server_fakes import HARMFUL, MarkerBackend, build_tokenizer, running  # noqa: E402
from wildguard_lite.runtime import Classifier  # noqa: E402
from wildguard_lite.server import ServeSettings, create_app  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
LONG = [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(40)]  # 120 engine calls


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


class SlowBackend(MarkerBackend):
    def __init__(self, tokenizer, seconds):
        super().__init__(tokenizer)
        self.seconds, self.calls = seconds, 0

    def next_logits(self, ids):
        time.sleep(self.seconds)
        self.calls += 1
        return super().next_logits(ids)


def slow_app(tokenizer, seconds=0.02, **settings):
    backend = SlowBackend(tokenizer, seconds)
    app = create_app(
        ServeSettings(**settings), classifier_factory=lambda index, threads: Classifier(backend, tokenizer)
    )
    return app, backend


def post_and_leave(base: str, path: str, body: dict, after: float) -> None:
    """Send a request on a raw socket and close the connection `after` seconds later."""
    host, port = base.removeprefix("http://").split(":")
    raw = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(raw)}\r\n\r\n".encode()
            + raw
        )
        time.sleep(after)


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {line_start} in:\n{text}")


@pytest.mark.parametrize(
    "abandon, settings, reason",
    [
        # the client leaves 0.3 s into a ~2.5 s classification: 499, the work stops
        ("disconnect", {}, "client_closed"),
        # the request passes --timeout 0.3 s: answered flagged (fail closed), and the work stops
        ("timeout", {"request_timeout_s": 0.3}, "timeout"),
    ],
)
def test_abandoned_work_stops_and_frees_the_worker(tokenizer, abandon, settings, reason):
    app, backend = slow_app(tokenizer, workers=1, **settings)
    with running(app) as base:
        if abandon == "disconnect":
            post_and_leave(base, "/v1/classify", {"items": LONG}, after=0.3)
        else:
            reply = httpx.post(f"{base}/v1/classify", json={"items": LONG}, timeout=30)
            assert reply.status_code == 200 and reply.json()["results"][-1]["not_judged"]["reason"] == "deadline"
        follow = httpx.post(f"{base}/v1/classify", json={"items": [{"prompt": f"{HARMFUL} now"}]}, timeout=30)
        calls = backend.calls
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
    assert follow.status_code == 200
    assert follow.json()["results"][0]["prompt_harmfulness"] == "harmful"
    # The abandoned request's 120 engine calls did not all run before the next request's one.
    assert calls < 3 * len(LONG)
    assert metric(metrics, f'wildguard_aborted_total{{reason="{reason}",stage="running"}}') == 1
    if abandon == "disconnect":
        assert metric(metrics, 'wildguard_requests_total{endpoint="/v1/classify",status="499"}') == 1


def test_abandoned_requests_still_queued_never_start(tokenizer):
    # One worker busy with a long request; two more wait in the queue and their clients leave.
    app, backend = slow_app(tokenizer, workers=1, request_timeout_s=60)
    with running(app) as base:
        import threading

        busy = threading.Thread(target=post_and_leave, args=(base, "/v1/classify", {"items": LONG}, 0.6))
        busy.start()
        time.sleep(0.1)
        leavers = [
            threading.Thread(target=post_and_leave, args=(base, "/v1/classify", {"items": LONG}, 0.2)) for _ in range(2)
        ]
        for t in leavers:
            t.start()
        for t in [busy, *leavers]:
            t.join()
        follow = httpx.post(f"{base}/v1/classify", json={"items": [{"prompt": "hello"}]}, timeout=30)
        calls = backend.calls
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
    assert follow.status_code == 200
    assert calls < 3 * len(LONG)
    assert metric(metrics, 'wildguard_aborted_total{reason="client_closed",stage="queued"}') == 2
    assert metric(metrics, 'wildguard_aborted_total{reason="client_closed",stage="running"}') == 1


def test_with_the_abort_disabled_abandoned_work_runs_to_the_end(tokenizer):
    # The old behaviour, kept as a switch for the benchmark: shows what the tests above measure.
    app, backend = slow_app(tokenizer, seconds=0.002, workers=1)
    with running(app) as base:
        app.state.runtime["pool"].abort_abandoned = False
        post_and_leave(base, "/v1/classify", {"items": LONG}, after=0.05)
        follow = httpx.post(f"{base}/v1/classify", json={"items": [{"prompt": "hello"}]}, timeout=30)
        calls = backend.calls
    assert follow.status_code == 200
    assert calls == 3 * len(LONG) + 1
