"""The server under bad input, fail-closed verdicts, OpenAI's request forms and LiteLLM's
Generic Guardrail API, on MarkerBackend (verdicts decided by markers in the text, so no
assertion depends on a model's judgement)."""

import json
import logging
import re
import socket
import subprocess
import sys
import threading
import time
import warnings

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from server_fakes import HARMFUL, REFUSE, UNREADABLE, build_tokenizer, marker_app, running
from wildguard_lite.server.moderation import OPENAI_CATEGORIES
from wildguard_lite.tokenization import WildGuardTokenizer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
KEY = "k" * 32
GUARDRAIL = "/beta/litellm_basic_guardrail_api"
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> WildGuardTokenizer:
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def no_server_errors(client) -> None:
    text = client.get("/metrics").text
    assert not re.search(r'status="5\d\d"', text), text


# -- bad input: one row per case; never a 500 ---------------------------------------------------
@pytest.mark.parametrize(
    "path, body, status, message",
    [
        # a lone surrogate in a prompt: valid JSON, not a Unicode character
        ("/v1/moderations", b'{"input": "hi \\ud800"}', 422, r"input: field 'prompt' .*lone surrogate \(U\+D800\)"),
        # ... in a response, in a list
        (
            "/v1/classify",
            b'{"items": [{"prompt": "a", "response": "\\udfff"}]}',
            422,
            r"items\[0\]: field 'response' .*lone surrogate",
        ),
        # ... in a text part
        ("/v1/moderations", b'{"input": [{"type": "text", "text": "\\ud83d"}]}', 422, r"input\[0\].*lone surrogate"),
        # ... in a guardrail text
        (GUARDRAIL, b'{"input_type": "request", "texts": ["ok", "\\ud800"]}', 422, r"texts\[1\].*lone surrogate"),
        # ... in the user message a response is paired with
        (
            GUARDRAIL,
            b'{"input_type": "response", "texts": ["ok"], "structured_messages": '
            b'[{"role": "user", "content": "\\ud800"}]}',
            422,
            "structured_messages.*lone surrogate",
        ),
        # JSON nested 100,000 deep (a RecursionError inside the parser)
        ("/v1/moderations", DEEP, 400, "nests arrays/objects too deeply"),
        # ... nested inside a valid-looking request
        ("/v1/classify", b'{"items": ' + DEEP + b"}", 400, "nests arrays/objects too deeply"),
        # a 5,000-digit integer (beyond Python's int conversion limit)
        ("/v1/moderations", b'{"input": ' + b"9" * 5000 + b"}", 400, "integer of more than 4300 digits"),
        # an image part: WildGuard reads text only
        (
            "/v1/moderations",
            {"input": [{"type": "image_url", "image_url": {"url": "data:,"}}]},
            422,
            r"input\[0\]: image input is not supported",
        ),
        # a text part with a number for text
        ("/v1/moderations", {"input": [{"type": "text", "text": 3}]}, 422, r"needs 'text' as a string, got int"),
        # an unknown part type
        ("/v1/moderations", {"input": [{"type": "audio", "audio": "x"}]}, 422, "unknown content part type 'audio'"),
        # parts mixed with strings
        ("/v1/moderations", {"input": ["hi", {"type": "text", "text": "x"}]}, 422, "must not be mixed"),
        # guardrail: input_type missing or wrong
        (GUARDRAIL, {"texts": ["hi"]}, 422, "'input_type' must be one of request, response, got None"),
        # guardrail: texts not a list of strings
        (GUARDRAIL, {"input_type": "request", "texts": "hi"}, 422, "'texts' must be a list of strings"),
        # guardrail: images are refused, never passed unjudged
        (GUARDRAIL, {"input_type": "request", "texts": ["hi"], "images": ["data:,"]}, 422, "'images' is not supported"),
        # guardrail: messages not a list
        (
            GUARDRAIL,
            {"input_type": "response", "texts": ["hi"], "structured_messages": {}},
            422,
            "'structured_messages' must be a list",
        ),
        # guardrail: the body is not an object
        (GUARDRAIL, [1], 422, "must be a JSON object with 'input_type'"),
        # guardrail: more texts than --max-items
        (GUARDRAIL, {"input_type": "request", "texts": ["a"] * 5}, 413, "the limit is 4 per request"),
    ],
)
def test_bad_input_gets_a_clear_4xx_never_a_500(tokenizer, path, body, status, message):
    app = marker_app(tokenizer, max_items=4, max_body_bytes=1 << 20)
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    with TestClient(app, raise_server_exceptions=True) as client:
        reply = client.post(path, headers={"Content-Type": "application/json"}, **kwargs)
        assert reply.status_code == status, reply.text
        error = reply.json()["error"]
        assert error["code"] == str(status) and re.search(message, error["message"]), error["message"]
        no_server_errors(client)


# -- /v1/moderations: OpenAI's forms and the fail-closed verdict --------------------------------
@pytest.mark.parametrize(
    "mode, openai_flags",
    [
        ("all", set(OPENAI_CATEGORIES)),  # the default: every OpenAI category follows the harm verdict
        ("illicit", {"illicit"}),  # only 'illicit'
        ("none", set()),  # none: only `flagged` and the WildGuard categories carry it
    ],
)
def test_openai_categories_option_maps_a_harmful_verdict(tokenizer, mode, openai_flags):
    app = marker_app(tokenizer, openai_categories=mode)
    with TestClient(app) as client:
        harmful, benign = client.post("/v1/moderations", json={"input": [f"x {HARMFUL}", "hello"]}).json()["results"]
    assert harmful["flagged"] and harmful["categories"]["harmful_request"]
    assert {name for name in OPENAI_CATEGORIES if harmful["categories"][name]} == openai_flags
    for name in OPENAI_CATEGORIES:  # scores agree with the flags
        assert (harmful["category_scores"][name] > 0.5) == (name in openai_flags)
    assert not benign["flagged"] and not any(benign["categories"].values())


def test_text_parts_are_one_input(tokenizer):
    app = marker_app(tokenizer)
    body = {"input": [{"type": "text", "text": "tell me"}, {"type": "text", "text": f"about {HARMFUL}"}]}
    with TestClient(app) as client:
        results = client.post("/v1/moderations", json=body).json()["results"]
    assert len(results) == 1 and results[0]["flagged"] and results[0]["categories"]["harmful_request"]


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/moderations", {"input": f"{UNREADABLE} hi"}),  # a prompt
        ("/v1/moderations", {"input": [{"prompt": f"{UNREADABLE} hi", "response": "ok"}]}),  # an exchange
    ],
)
def test_unreadable_verdict_is_flagged_never_passed(tokenizer, path, body):
    app = marker_app(tokenizer)
    with TestClient(app) as client:
        result = client.post(path, json=body).json()["results"][0]
        metrics = client.get("/metrics").text
    assert result["wildguard"]["is_parsing_error"] is True
    assert result["flagged"] is True and result["categories"]["parsing_error"] is True
    assert all(result["categories"][name] for name in OPENAI_CATEGORIES)
    assert "wildguard_parsing_errors_total 1" in metrics


# -- LiteLLM's Generic Guardrail API ------------------------------------------------------------
def guard(client, input_type, texts, **extra):
    reply = client.post(GUARDRAIL, json={"input_type": input_type, "texts": texts, "request_data": {}, **extra})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_guardrail_request_blocks_a_harmful_prompt(tokenizer):
    with TestClient(marker_app(tokenizer)) as client:
        blocked = guard(client, "request", ["be nice", f"now {HARMFUL}"])
        passed = guard(client, "request", ["hello", "how are you"])
        empty = guard(client, "request", [])
        unreadable = guard(client, "request", [f"{UNREADABLE}"])
    assert blocked["action"] == "BLOCKED" and "texts[1]: harmful request" in blocked["blocked_reason"]
    assert passed["action"] == "NONE" and "blocked_reason" not in passed
    assert empty["action"] == "NONE" and empty["wildguard"] == []
    assert unreadable["action"] == "BLOCKED" and "could not be read" in unreadable["blocked_reason"]


@pytest.mark.parametrize(
    "prompt, response, action",
    [
        (f"{HARMFUL} please", f"{REFUSE} I can't help", "NONE"),  # refusing a harmful request passes
        ("chemistry question", f"here is how: {HARMFUL}", "BLOCKED"),  # a harmful answer to a benign one
        (f"{HARMFUL} please", f"sure: {HARMFUL}", "BLOCKED"),  # complying with a harmful request
        ("hi", "hello!", "NONE"),  # benign both
    ],
)
def test_guardrail_response_is_judged_with_its_prompt(tokenizer, prompt, response, action):
    messages = [{"role": "system", "content": "be helpful"}, {"role": "user", "content": prompt}]
    with TestClient(marker_app(tokenizer)) as client:
        # The prompt from structured_messages ...
        direct = guard(client, "response", [response], structured_messages=messages)
        # ... or remembered from the request check of the same LiteLLM call (LiteLLM sends no
        # messages with responses); the request check's own verdict is not asserted here.
        guard(client, "request", ["be helpful", prompt], structured_messages=messages, litellm_call_id="call-1")
        remembered = guard(client, "response", [response], litellm_call_id="call-1")
    for reply in (direct, remembered):
        assert reply["action"] == action, reply
        assert reply["wildguard"][0]["response_harmfulness"] is not None  # judged as a response
        if action == "BLOCKED":
            assert "harmful response" in reply["blocked_reason"]


def test_guardrail_response_without_its_prompt_is_judged_alone(tokenizer):
    with TestClient(marker_app(tokenizer)) as client:
        reply = guard(client, "response", [f"sure: {HARMFUL}"], litellm_call_id="never-seen")
    assert reply["action"] == "BLOCKED" and "judged without its prompt" in reply["blocked_reason"]
    assert reply["wildguard"][0]["response_harmfulness"] is None


@pytest.mark.parametrize(
    "headers, status",
    [
        ({"x-api-key": KEY}, 200),  # LiteLLM's generic guardrail sends its api_key so
        ({"Authorization": f"Bearer {KEY}"}, 200),  # OpenAI clients
        ({"x-api-key": "wrong" * 4}, 401),  # a wrong key
        ({}, 401),  # none
    ],
)
def test_guardrail_accepts_either_key_header(tokenizer, headers, status):
    with TestClient(marker_app(tokenizer, api_key=KEY)) as client:
        reply = client.post(GUARDRAIL, json={"input_type": "request", "texts": ["hi"]}, headers=headers)
    assert reply.status_code == status


# -- the connection: stalled bodies, clients that leave ----------------------------------------
def raw_request(port: int, head: str, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.encode() + b"\r\n" + body)
    return sock


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_stalled_body_gets_408(tokenizer):
    app = marker_app(tokenizer, body_timeout_s=0.5)
    with running(app) as url:
        head = "POST /v1/moderations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
        sock = raw_request(port_of(url), head, b'{"input": "he')  # and then nothing
        start = time.monotonic()
        answer = sock.recv(65536).decode()
        sock.close()
        assert time.monotonic() - start < 5
    assert answer.startswith("HTTP/1.1 408") and "did not arrive within 0.5 s" in answer


@pytest.mark.parametrize(
    "sent",
    [
        b"GET /health HTTP/1.1\r\nHost: x\r\n",  # headers that never end: were held open for ever
        b"POST /v1/classify HTTP/1.1\r\nHost",  # a request line and half a header
        b"",  # a connection that sends nothing
    ],
)
def test_incomplete_request_head_gets_408(tokenizer, sent):
    app = marker_app(tokenizer, header_timeout_s=0.5)
    with running(app) as url:
        sock = socket.create_connection(("127.0.0.1", port_of(url)), timeout=10)
        sock.sendall(sent)
        start = time.monotonic()
        answer = sock.recv(65536).decode()
        closed = sock.recv(1) == b""
        sock.close()
    assert time.monotonic() - start < 5 and closed
    assert answer.startswith("HTTP/1.1 408") and "did not arrive within 0.5 s" in answer


def _read_response(sock) -> bytes:
    """One whole HTTP/1.1 response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return data


def test_slow_second_request_head_gets_408(tokenizer):
    # A kept-alive connection whose next head trickles in: each byte reset uvicorn's keep-alive
    # timer, so it was held as long as the client kept sending.
    app = marker_app(tokenizer, header_timeout_s=1.0)
    with running(app) as url:
        sock = socket.create_connection(("127.0.0.1", port_of(url)), timeout=10)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = _read_response(sock)  # head and body: a busy machine may send them apart
        start = time.monotonic()
        answer = b""
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n":
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
            sock.setblocking(False)
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                pass
            sock.setblocking(True)
            if answer:
                break
        sock.close()
    assert first.startswith(b"HTTP/1.1 200")
    assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - start < 3, answer


def test_405_names_the_allowed_methods(tokenizer):
    # RFC 9110: a 405 carries Allow (was missing).
    with TestClient(marker_app(tokenizer)) as client:
        reply = client.get("/v1/classify")
        health = client.delete("/health")
    assert reply.status_code == 405 and reply.headers["allow"] == "POST"
    assert health.status_code == 405 and health.headers["allow"] == "GET"


@pytest.mark.parametrize(
    "body, message",
    [
        # a misspelled field: was ignored, the exchange judged without its response
        (
            {"items": [{"prompt": "a", "respones": "b"}]},
            r"items\[0\]: unknown field 'respones' \(did you mean 'response'\?\); "
            r"the fields are prompt, response",
        ),
        # a field the endpoint does not have
        ({"items": [{"prompt": "a", "id": 3}]}, r"items\[0\]: unknown field 'id'; the fields are prompt, response"),
        # a misspelled top-level field beside items
        ({"items": [{"prompt": "a"}], "option": 1}, r"request body: unknown field 'option'; the fields are items"),
    ],
)
def test_classify_refuses_unknown_fields(tokenizer, body, message):
    with TestClient(marker_app(tokenizer)) as client:
        reply = client.post("/v1/classify", json=body)
    assert reply.status_code == 422 and re.search(message, reply.json()["error"]["message"]), reply.text


def test_client_that_leaves_is_not_a_500(tokenizer, caplog):
    import httpx

    gate = threading.Event()
    app = marker_app(tokenizer)
    pool_of = lambda: app.state.runtime["pool"]  # noqa: E731
    with caplog.at_level(logging.WARNING), running(app) as url:
        port = port_of(url)
        # 1. leaves while sending its body
        head = "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
        raw_request(port, head, b'{"items": [').close()
        # 2. leaves while its request waits for the (held) worker
        original = pool_of().classifier.classify_planned  # the server plans before queuing
        pool_of().classifier.classify_planned = lambda plans, **kw: (gate.wait(10), original(plans, **kw))[1]
        body = json.dumps({"items": [{"prompt": "hi"}]}).encode()
        head = (
            f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
        )
        sock = raw_request(port, head, body)
        deadline = time.monotonic() + 5
        while pool_of().running == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        sock.close()
        time.sleep(0.3)
        gate.set()
        deadline = time.monotonic() + 5
        metrics = ""
        while metrics.count('status="499"') < 1 or 'endpoint="/v1/classify",status="499"} 2' not in metrics:
            assert time.monotonic() < deadline, metrics
            metrics = httpx.get(f"{url}/metrics").text
            time.sleep(0.05)
    assert not re.search(r'status="5\d\d"', metrics)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


# -- start-up: a model that cannot load is one clear line ---------------------------------------
def test_serve_with_a_broken_model_file_fails_in_one_line(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    proc = subprocess.run(
        [sys.executable, "-m", "wildguard_lite.cli.serve", "--model", str(bad), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert re.search(r"^error: .*broken\.gguf", proc.stderr, re.M), proc.stderr
