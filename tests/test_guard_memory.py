"""What the guardrail endpoint remembers between calls is bounded: PromptMemory (per call) and
JudgedMemory (content hashes) in entries, bytes and age, and a server under 1 MB chats stays
small."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from wildguard_lite.server.guard_memory import PromptMemory
from wildguard_lite.server.guardrail import GUARDRAIL_PATH


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
            {"max_bytes": 4500},
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
    entries = memory._memory._entries
    assert {key: entries[key][1].prompt for key in entries} == kept
    assert memory.bytes == sum(entry[2] for entry in entries.values())
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

    # An agent loop's request check: the 1 MB user turn was judged on an earlier call (the first
    # warm-up request), so only the memories see it (what the old server kept whole).
    def body(i: int) -> bytes:
        messages = [
            {"role": "user", "content": "word " * 200_000},
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


def test_judged_memory_keeps_hashes_bounded_and_renews_what_is_used():
    from wildguard_lite.server.guard_memory import JUDGED_ENTRY_BYTES, JudgedMemory, message_key

    clock = Clock()
    memory = JudgedMemory(max_entries=3, ttl_s=10, clock=clock)
    keys = [message_key("user", f"turn {i}") for i in range(4)]
    for key in keys[:3]:
        memory.add(key)
    clock.now += 6
    assert memory.known(keys[0])  # used: renewed (and now the most recent)
    clock.now += 6  # 12 s after the first adds: turn 1 and 2 expire, turn 0 was renewed at 6 s
    assert memory.known(keys[0]) and not memory.known(keys[1]) and not memory.known(keys[2])
    for key in keys[1:]:
        memory.add(key)
    assert len(memory) == 3 and not memory.known(keys[0])  # at most 3: the least recently used went
    assert memory.bytes == 3 * JUDGED_ENTRY_BYTES
    assert message_key("user", "x") != message_key("system", "x")
