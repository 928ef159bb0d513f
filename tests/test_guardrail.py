"""LiteLLM's Generic Guardrail API on real traffic shapes: long chats (only the new user turn is
judged), replies paired with their turn, the streamed reply's holdback, and the bounded
PromptMemory. The server runs over MarkerBackend: the test decides what is harmful."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient
from server_fakes import HARMFUL, REFUSE, UNREADABLE, build_tokenizer, marker_app

from wildguard_lite.server.guardrail import (
    GUARDRAIL_PATH,
    HOLDBACK_MAX_CHARS,
    PromptMemory,
    unfinished_word,
    user_turns,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def guard(client, input_type, texts, **extra):
    reply = client.post(GUARDRAIL_PATH, json={"input_type": input_type, "texts": texts, "request_data": {}, **extra})
    assert reply.status_code == 200, reply.text
    return reply.json()


def chat(n: int, last: str, old: str = f"an old question {HARMFUL}") -> list[dict]:
    """A chat of n messages: a system prompt, user/assistant turns (the old user turns hold
    `old`), ending with the user turn `last`."""
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    while len(messages) < n - 1:
        messages.append({"role": "user", "content": old})
        messages.append({"role": "assistant", "content": "Here is an answer about rivers."})
    return (messages + [{"role": "user", "content": last}])[-n:]


def request_check(client, messages, **extra):
    """A request check as LiteLLM sends it: every message's text, and the messages."""
    texts = [m["content"] for m in messages if isinstance(m.get("content"), str)]
    return guard(client, "request", texts, structured_messages=messages, **extra)


# -- long chats: the new user turn only ---------------------------------------------------------
def test_a_long_chat_costs_what_its_last_turn_costs(tokenizer):
    # --max-items 4: LiteLLM's texts (one per message) no longer count against it.
    app = marker_app(tokenizer, max_items=4)
    with TestClient(app) as client:
        pool = app.state.runtime["pool"]
        tokens = {}
        for n in (2, 51, 101, 200):
            before = pool.tokens_evaluated()
            reply = request_check(client, chat(n, "what is the capital of France?"))
            # Old user turns (holding the marker here: an old false positive) are not re-judged.
            assert reply["action"] == "NONE", (n, reply)
            tokens[n] = pool.tokens_evaluated() - before
            blocked = request_check(client, chat(n, f"tell me {HARMFUL}"))
            assert blocked["action"] == "BLOCKED" and "the last user turn: harmful request" in blocked["blocked_reason"]
    assert len(set(tokens.values())) == 1 and tokens[2] > 0, tokens


@pytest.mark.parametrize(
    "messages, action, judged",
    [
        # the system prompt is the operator's: not judged
        ([{"role": "system", "content": HARMFUL}, {"role": "user", "content": "hi"}], "NONE", 1),
        # two user messages after the last reply: one new turn, judged together
        (
            [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "tell me"},
                {"role": "user", "content": HARMFUL},
            ],
            "BLOCKED",
            1,
        ),
        # text parts of one message are one text
        (
            [{"role": "user", "content": [{"type": "text", "text": "tell me"}, {"type": "text", "text": HARMFUL}]}],
            "BLOCKED",
            1,
        ),
        # an agent loop: the chat ends with a tool result; the user's turn was judged before
        (
            [
                {"role": "user", "content": f"{HARMFUL}"},
                {"role": "assistant", "content": "calling a tool"},
                {"role": "tool", "content": "tool output", "tool_call_id": "t1"},
            ],
            "NONE",
            0,
        ),
        # tool output is not a user request
        (
            [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": "calling"},
                {"role": "tool", "content": HARMFUL, "tool_call_id": "t1"},
            ],
            "NONE",
            0,
        ),
        # an unreadable verdict on the new turn blocks
        ([{"role": "user", "content": UNREADABLE}], "BLOCKED", 1),
    ],
)
def test_what_a_request_check_judges(tokenizer, messages, action, judged):
    with TestClient(marker_app(tokenizer)) as client:
        reply = request_check(client, messages)
    assert reply["action"] == action, reply
    assert len(reply["wildguard"]) == judged


def test_without_messages_each_text_is_judged_as_before(tokenizer):
    with TestClient(marker_app(tokenizer)) as client:
        reply = guard(client, "request", ["be nice", f"now {HARMFUL}"])
    assert reply["action"] == "BLOCKED" and "texts[1]: harmful request" in reply["blocked_reason"]
    assert len(reply["wildguard"]) == 2


@pytest.mark.parametrize(
    "messages, last, new",
    [
        ([], None, None),  # no messages
        ([{"role": "user", "content": "a"}], "a", "a"),  # one turn
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "a", None),  # answered
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "b", "a\n\nb"),  # two new
        ([{"role": "user", "content": None}, {"role": "user", "content": "b"}], "b", "b"),  # no text
        ("not a list", None, None),  # not a chat
    ],
)
def test_user_turns(messages, last, new):
    assert user_turns(messages) == (new, last)


# -- the reply: judged with the turn it answers -------------------------------------------------
@pytest.mark.parametrize(
    "reply_text, action",
    [
        (f"here is how: {HARMFUL}", "BLOCKED"),  # a harmful answer
        (f"{REFUSE} no.", "NONE"),  # a refusal
        ("Paris.", "NONE"),  # benign
    ],
)
def test_reply_is_judged_with_the_remembered_turn_of_a_long_chat(tokenizer, reply_text, action):
    with TestClient(marker_app(tokenizer)) as client:
        assert request_check(client, chat(200, "capital of France?"), litellm_call_id="c1")["action"] == "NONE"
        reply = guard(client, "response", [reply_text], litellm_call_id="c1")
    assert reply["action"] == action, reply
    assert reply["wildguard"][0]["response_harmfulness"] is not None  # judged as a reply, with its turn


# -- streaming: the unfinished word is held back ------------------------------------------------
@pytest.mark.parametrize(
    "text, held",
    [
        ("Sure, here is", 2),  # "is" may be the start of a longer word
        ("Sure, here is ", 0),  # a finished word
        ("Paris.\n", 0),
        ("", 0),
        ("HARMFUL-MAR", 11),  # no whitespace yet: all of it
        ("x" * 500, HOLDBACK_MAX_CHARS),  # a long run without whitespace: released once judged
    ],
)
def test_unfinished_word(text, held):
    assert unfinished_word(text) == held


def test_a_streamed_round_holds_back_its_unfinished_word(tokenizer):
    with TestClient(marker_app(tokenizer)) as client:
        request_check(client, [{"role": "user", "content": "hi"}], litellm_call_id="s1")
        rounds = [
            guard(client, "response", [t], litellm_call_id="s1")
            for t in ("Hello th", "Hello there, here is HARMFUL-MAR", f"Hello there, here is {HARMFUL} ok")
        ]
    assert [r.get("stream_holdback_chars") for r in rounds] == [[2], [11], None]
    assert [r["action"] for r in rounds] == ["NONE", "NONE", "BLOCKED"]


# -- PromptMemory: bounded, clipped, expired ----------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize(
    "options, steps, kept",
    [
        # at most max_entries: the least recently remembered goes first
        ({"max_entries": 2}, [("a", "x"), ("b", "y"), ("c", "z")], {"b": "y", "c": "z"}),
        # at most max_bytes, whatever the entry count
        (
            {"max_bytes": 3000},
            [("a", "x" * 1000), ("b", "y" * 1000), ("c", "z" * 1000)],
            {"b": "y" * 1000, "c": "z" * 1000},
        ),
        # each entry clipped to its end (what a response check can place beside a reply)
        ({"clip_chars": 4}, [("a", "0123456789")], {"a": "6789"}),
        # remembered again: the newer turn replaces the older, counted once
        ({}, [("a", "old"), ("a", "new")], {"a": "new"}),
        # expired by age on any use, never looked up: 'a' is gone after the clock moves
        ({"ttl_s": 10}, [("a", "x"), 11.0, ("b", "y")], {"b": "y"}),
    ],
)
def test_prompt_memory_rows(options, steps, kept):
    clock = Clock()
    memory = PromptMemory(**{"clip_chars": 1000, **options}, clock=clock)
    for step in steps:
        if isinstance(step, float):
            clock.now += step
        else:
            memory.remember(*step)
    assert {key: memory._entries[key][1] for key in memory._entries} == kept
    assert memory.bytes == sum(entry[2] for entry in memory._entries.values())
    for key, value in kept.items():
        assert memory.recall(key) == value


SERVER = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from server_fakes import build_tokenizer, marker_app, running
tokenizer = build_tokenizer(Path(sys.argv[2]))
with running(marker_app(tokenizer, max_body_bytes=4 << 20)) as url:
    print(url, flush=True)
    sys.stdin.read()
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_300_requests_of_1mb_messages_grow_the_server_by_less_than_64_mib(tmp_path):
    import httpx

    # An agent loop's request check: the 1 MB user turn was judged on an earlier call, so only
    # the memory sees it (what the old server kept whole, before judging anything).
    def body(i: int) -> bytes:
        messages = [
            {"role": "user", "content": f"{i} " + "word " * 200_000},
            {"role": "assistant", "content": "calling a tool"},
            {"role": "tool", "content": "done", "tool_call_id": "t"},
        ]
        return json.dumps(
            {"input_type": "request", "texts": [], "structured_messages": messages, "litellm_call_id": f"call-{i}"}
        ).encode()

    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(Path(__file__).parent), str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        url = proc.stdout.readline().strip()
        with httpx.Client(base_url=url, timeout=60) as http:

            def send(i):
                reply = http.post(GUARDRAIL_PATH, content=body(i), headers={"Content-Type": "application/json"})
                assert reply.status_code == 200 and reply.json()["action"] == "NONE", reply.text[:300]

            for i in range(20):  # warm-up: the allocator's arenas, the tokenizer, the app
                send(i)
            before = rss_mib(proc.pid)
            for i in range(20, 320):
                send(i)
            grown = rss_mib(proc.pid) - before
    finally:
        proc.stdin.close()
        proc.wait(30)
    print(f"server RSS grew {grown:.1f} MiB over 300 requests of 1 MB messages")
    assert grown < 64, grown
