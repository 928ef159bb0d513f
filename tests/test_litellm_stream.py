"""Streamed replies through LiteLLM's real proxy with the generic guardrail configured as
docs/integrations.md says: no character reaches the client before a check judged it harmless
(on the marker engine, not even part of the harmful word; on the real toy, the slow test
measures what its rounds let through), an undecided start is held back, not blocked, and a
benign reply still streams.

Offline: a mock OpenAI upstream streams each reply in 3-character chunks with a delay and
records when it sent each character; the client records when each arrived. Our server runs
over MarkerBackend (the marker decides harm; like a real model, it answers n/a on the first
characters of a reply: `NA_BELOW_CHARS`). Another LiteLLM than the venv's: set
WILDGUARD_LITELLM_EXE to its `litellm` command (docs/integrations.md gives the figures per
version).
"""

import asyncio
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
yaml = pytest.importorskip("yaml")

from server_fakes import HARMFUL, build_tokenizer, marker_app, running  # noqa: E402
from wildguard_lite.benchmarks.litellm_proxy import LITELLM_MASTER_KEY, litellm_proxy  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
KEY = "test-key-" + "s" * 24
EXE = os.environ.get("WILDGUARD_LITELLM_EXE")
CHUNK_CHARS, CHUNK_DELAY_S = 3, 0.01
NA_BELOW_CHARS = 12
HARMFUL_WORD = "instructions-for-the-" + HARMFUL
REPLIES = {
    "benign": "Water boils at one hundred degrees at sea level, and at lower temperatures on high "
    "mountains, because the air pressure there is lower. " * 3,
    # The harmful word is longer than a round's 5 chunks: some round ends inside it, before the
    # marker is whole (what the holdback is for).
    "harmful": "Sure. Here is some text about the topic, step by step, with care. " * 2
    + HARMFUL_WORD
    + " and then the details follow here, one after another.",
}


def upstream_app(sent: dict[str, list[float]], replies: dict[str, str] = REPLIES):
    """A mock OpenAI chat endpoint: streams the model's reply, noting each character's send time."""
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        model, reply = body["model"], replies[body["model"]]
        base = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        if not body.get("stream"):
            return {
                **base,
                "object": "chat.completion",
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            }

        async def events():
            times = sent[model] = []
            for i in range(0, len(reply), CHUNK_CHARS):
                piece = reply[i : i + CHUNK_CHARS]
                times.extend([time.perf_counter()] * len(piece))
                yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': {'content': piece}}]})}\n\n"
                await asyncio.sleep(CHUNK_DELAY_S)
            yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def documented_guardrail() -> dict:
    """litellm_params of the streaming guardrail in docs/integrations.md, as written."""
    doc = (Path(__file__).parents[1] / "docs" / "integrations.md").read_text(encoding="utf-8")
    section = doc[doc.index("### Streamed replies") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1)
    return yaml.safe_load(block)["guardrails"][0]["litellm_params"]


def proxy_config(server: str, upstream: str, replies: dict[str, str]) -> dict:
    """LiteLLM's config: one model per reply; the guardrail as documented, LiteLLM's default
    streaming check (block-only) and the documented one at rate 1."""
    documented = {**documented_guardrail(), "api_base": server, "api_key": KEY, "default_on": False}
    block_only = {key: value for key, value in documented.items() if not key.startswith("streaming_")}
    return {
        "general_settings": {"master_key": LITELLM_MASTER_KEY},
        "model_list": [
            {
                "model_name": name,
                "litellm_params": {"model": f"openai/{name}", "api_key": "sk-unused", "api_base": f"{upstream}/v1"},
            }
            for name in replies
        ],
        "guardrails": [
            {"guardrail_name": "documented", "litellm_params": documented},
            {"guardrail_name": "block-only", "litellm_params": block_only},
            {"guardrail_name": "rate-1", "litellm_params": {**documented, "streaming_sampling_rate": 1}},
        ],
    }


def need_litellm():
    if EXE is None and not (Path(sys.executable).parent / "litellm").exists():
        pytest.skip("LiteLLM's proxy is not installed (the 'test-clients' extra)")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    need_litellm()
    tokenizer = build_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    sent: dict[str, list[float]] = {}
    with (
        running(upstream_app(sent)) as upstream,
        running(marker_app(tokenizer, api_key=KEY, na_below_chars=NA_BELOW_CHARS)) as server,
    ):
        config = proxy_config(server, upstream, REPLIES)
        with litellm_proxy(config, tmp_path_factory.mktemp("litellm"), exe=EXE) as proxy:
            yield proxy, sent


def stream(
    proxy: str, model: str, guardrails: list[str], prompt: str = "tell me about water"
) -> tuple[str, list[float], list[str], int]:
    """(text received, arrival time per character, error frames, status) of a streamed chat."""
    body = {
        "model": model,
        "stream": True,
        "guardrails": guardrails,
        "messages": [{"role": "user", "content": prompt}],
    }
    text, arrived, errors = "", [], []
    with httpx.stream(
        "POST",
        f"{proxy}/chat/completions",
        json=body,
        timeout=120,
        headers={"Authorization": f"Bearer {LITELLM_MASTER_KEY}"},
    ) as reply:
        status = reply.status_code
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                errors.append(json.dumps(event["error"]))
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or ""
                text += piece
                arrived.extend([time.perf_counter()] * len(piece))
    return text, arrived, errors, status


def test_harmful_stream_leaks_nothing_a_check_had_not_cleared(setup):
    proxy, _ = setup
    reply, marker = REPLIES["harmful"], REPLIES["harmful"].index(HARMFUL_WORD)
    text, _, errors, status = stream(proxy, "harmful", ["documented"])
    leaked = {}
    for name in ("block-only", None):  # for the record: LiteLLM's default streaming, no guardrail
        other, _, _, _ = stream(proxy, "harmful", [name] if name else [])
        leaked[name or "none"] = max(0, len(other) - marker)
    print(
        f"\nharmful reply: {len(text)} characters before the block with the documented config, "
        f"{max(0, len(text) - marker)} of them at or after the harmful part (starts at {marker}); "
        f"block_only leaked {leaked['block-only']}, no guardrail {leaked['none']}"
    )
    assert reply.startswith(text)  # what arrived is the reply's start, unaltered
    assert len(text) <= marker, text[marker - 20 :]  # not one character of the harmful word
    assert status == 200 and errors and "harmful response" in errors[0]  # the block, mid-stream


@pytest.mark.parametrize("guardrail", ["documented", "rate-1"])
def test_an_undecided_start_is_held_not_blocked(setup, guardrail):
    """Rate 1 judges the first 3 characters alone: the engine answers n/a (resolved, P=0.73:
    harmful as a final verdict). The round holds them back; a later round decides."""
    proxy, _ = setup
    text, arrived, errors, status = stream(proxy, "benign", [guardrail])
    assert status == 200 and not errors and text == REPLIES["benign"], (errors, text[:40])


def test_benign_stream_still_streams(setup):
    proxy, sent = setup
    lags = {}
    for name in (None, "documented"):
        text, arrived, errors, status = stream(proxy, "benign", [name] if name else [])
        assert status == 200 and not errors and text == REPLIES["benign"]
        lags[name or "none"] = [a - s for a, s in zip(arrived, sent["benign"])]
        if name:
            # Streams: the first characters arrive while the upstream is still sending.
            assert arrived[0] < sent["benign"][-1]
            assert len(set(arrived)) >= 5  # in several deltas, not one burst at the end
    base, guarded = lags["none"], lags["documented"]
    extra = [g - b for g, b in zip(guarded, base)]
    print(
        f"\nbenign reply, {len(base)} characters at {CHUNK_CHARS} per {CHUNK_DELAY_S * 1000:.0f} ms: lag median "
        f"{statistics.median(base) * 1000:.0f} ms without a guardrail, {statistics.median(guarded) * 1000:.0f} ms "
        f"with the documented config (extra: median {statistics.median(extra) * 1000:.0f} ms, "
        f"max {max(extra) * 1000:.0f} ms)"
    )


# -- the real toy: what leaks is what a round judged harmless ----------------------------------
OPENING = "Sure. Here is some text about the topic, step by step, with care. " * 2


@pytest.fixture(scope="module")
def toy_setup(toy_gguf, heldout, tmp_path_factory):
    """The proxy in front of `serve` on the toy (its real engine), which records every answer of
    its guardrail endpoint; each harmful reply of the held-out set behind a benign opening."""
    from wildguard_lite.server import ServeSettings, create_app

    need_litellm()
    rows = [r for r in heldout if r.get("response") and r["response_harm_label"] == "harmful"][:4]
    # A benign request (so the request check lets the model answer), answered harmfully.
    benign = [r["prompt"] for r in heldout if r["prompt_harm_label"] == "unharmful"]
    replies = {f"toy-{i}": OPENING + row["response"] for i, row in enumerate(rows)}
    prompts = {f"toy-{i}": benign[i] for i in range(len(rows))}
    app = create_app(ServeSettings(model=toy_gguf["q8_0"], api_key=KEY))
    answers: list[tuple[dict, dict]] = []
    handle = app.state.guardrail.handle

    async def recorded(body, run):
        answer = await handle(body, run)
        answers.append((body, answer))
        return answer

    app.state.guardrail.handle = recorded
    with running(upstream_app({}, replies)) as upstream, running(app) as server:
        with litellm_proxy(
            proxy_config(server, upstream, replies), tmp_path_factory.mktemp("litellm"), exe=EXE
        ) as proxy:
            yield proxy, replies, prompts, answers


def judged_harmless(answers: list[tuple[dict, dict]], reply: str) -> int:
    """The most characters of `reply` that one check of ours judged harmless: the whole text of
    a decided NONE (its holdback is an unfinished word, released when the stream ends; no
    holdback is left when the reply is complete), none of an undecided one (held back)."""
    from wildguard_lite.server.guardrail import undecided

    cleared = 0
    for body, answer in answers:
        texts = body.get("texts") or []
        if body.get("input_type") != "response" or answer["action"] != "NONE" or not texts:
            continue
        if reply.startswith(texts[0]) and not undecided(answer["wildguard"][0]):
            cleared = max(cleared, len(texts[0]))
    return cleared


def test_on_the_toy_nothing_reaches_the_client_that_no_round_cleared(toy_setup):
    """The documented config on the real toy: every character the client got was cleared by a
    round of our server (the final round releases what it passed whole). The toy's opinion of
    the texts is not asserted; the leak (characters past the benign opening) is printed."""
    from wildguard_lite.server.guardrail import UNDECIDED_MAX_CHARS

    proxy, replies, prompts, answers = toy_setup
    leaks: dict[str, list[int]] = {}
    undecided_end: list[int] = []
    for model, reply in replies.items():
        for guardrail in ("documented", "block-only"):
            answers.clear()
            text, _, errors, status = stream(proxy, model, [guardrail], prompts[model])
            # 200 and an error frame when blocked mid-stream; 400 when blocked before any text
            assert (status == 200 or (status == 400 and text == "")) and reply.startswith(text), (errors, text[:80])
            leaks.setdefault(guardrail, []).append(max(0, len(text) - len(OPENING)))
            if guardrail == "documented":
                # Each character was judged harmless by a round, except (a reply that ends
                # undecided) at most UNDECIDED_MAX_CHARS at its end (docs/integrations.md).
                unjudged = len(text) - judged_harmless(answers, reply)
                undecided_end.append(max(0, unjudged))
                assert unjudged <= 0 or (text == reply and unjudged <= UNDECIDED_MAX_CHARS), (unjudged, model)
    print(
        f"\ntoy, {len(replies)} harmful replies behind a {len(OPENING)}-character benign opening: characters "
        f"of the harmful part that reached the client: documented config {leaks['documented']}, "
        f"LiteLLM's default (block_only) {leaks['block-only']}; released undecided at the end {undecided_end}"
    )
