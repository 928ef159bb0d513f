"""LiteLLM's Generic Guardrail API on real traffic shapes: chats (every user turn and system
message judged once, a fabricated history judged), replies paired with their turn (a long
turn's end), the streamed reply's holdback (undecided starts held, not blocked), and the
bounded memories. The server runs over MarkerBackend: the test decides what is harmful."""

from __future__ import annotations


import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient
from server_fakes import HARMFUL, REFUSE, UNDECIDED, UNREADABLE, build_tokenizer, marker_app

from wildguard_lite.server.guardrail import (
    GUARDRAIL_PATH,
    HOLDBACK_MAX_CHARS,
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


def chat(n: int, last: str, old: str = "an old question") -> list[dict]:
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


# -- every user turn and system message, unless judged harmless before ----------------------------
def test_an_honest_chat_costs_its_new_turn(tokenizer):
    """A chat played turn by turn (LiteLLM re-sends it whole each time): each call judges its new
    turn only (the system prompt once), up to 200 messages; --max-items 4 is not involved."""
    app = marker_app(tokenizer, max_items=4)
    with TestClient(app) as client:
        pool = app.state.runtime["pool"]
        messages = [{"role": "system", "content": "You are a helpful assistant."}]
        tokens = []
        while len(messages) < 200:
            messages.append({"role": "user", "content": f"question {len(messages):03d} about rivers"})
            before = pool.tokens_evaluated()
            reply = request_check(client, messages)
            assert reply["action"] == "NONE", reply
            tokens.append(pool.tokens_evaluated() - before)
            assert len(reply["wildguard"]) == (2 if len(messages) == 2 else 1)  # the system prompt once
            messages.append({"role": "assistant", "content": "Here is an answer about rivers."})
        # The same chat with a harmful new turn is blocked by that turn.
        blocked = request_check(client, messages + [{"role": "user", "content": f"tell me {HARMFUL}"}])
    assert blocked["action"] == "BLOCKED" and "the last user turn: harmful request" in blocked["blocked_reason"]
    assert len(set(tokens[1:])) == 1 and tokens[0] > tokens[1] > 0, tokens


@pytest.mark.parametrize(
    "messages, action, judged, reason",
    [
        # a harmful system message is judged as a prompt: blocked
        (
            [{"role": "system", "content": HARMFUL}, {"role": "user", "content": "hi"}],
            "BLOCKED",
            2,
            "messages[0]: the system message: harmful request",
        ),
        # so is a developer message (OpenAI's newer name for it)
        (
            [{"role": "user", "content": "hi"}, {"role": "developer", "content": f"say {HARMFUL}"}],
            "BLOCKED",
            2,
            "messages[1]: the developer message: harmful request",
        ),
        # a fabricated history: the harmful turn was never judged here, so it is now
        (
            [
                {"role": "user", "content": f"tell me {HARMFUL}"},
                {"role": "assistant", "content": "Sure"},
                {"role": "user", "content": "Continue"},
            ],
            "BLOCKED",
            2,
            "messages[0]: an earlier user turn: harmful request",
        ),
        # two user messages after the last reply: one new turn, judged together
        (
            [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "tell me"},
                {"role": "user", "content": HARMFUL},
            ],
            "BLOCKED",
            2,
            "the last user turn: harmful request",
        ),
        # text parts of one message are one text
        (
            [{"role": "user", "content": [{"type": "text", "text": "tell me"}, {"type": "text", "text": HARMFUL}]}],
            "BLOCKED",
            1,
            "the last user turn",
        ),
        # tool output is not a user request; assistant messages are not judged
        (
            [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": f"calling {HARMFUL}"},
                {"role": "tool", "content": HARMFUL, "tool_call_id": "t1"},
            ],
            "NONE",
            1,
            None,
        ),
        # an unreadable verdict on the new turn blocks
        ([{"role": "user", "content": UNREADABLE}], "BLOCKED", 1, "could not be read"),
    ],
)
def test_what_a_request_check_judges(tokenizer, messages, action, judged, reason):
    with TestClient(marker_app(tokenizer)) as client:
        reply = request_check(client, messages)
        again = request_check(client, messages)
    assert reply["action"] == again["action"] == action, reply
    assert len(reply["wildguard"]) == judged
    if reason:
        assert reason in reply["blocked_reason"]
    # What was judged harmless is not judged again; a harmful (or unreadable) verdict is.
    not_harmless = [r for r in reply["wildguard"] if r["prompt_harmfulness"] != "unharmful"]
    assert len(again["wildguard"]) == len(not_harmless) == (1 if reason else 0)


def test_a_remembered_text_is_known_by_role_and_text(tokenizer):
    with TestClient(marker_app(tokenizer)) as client:
        request_check(client, [{"role": "user", "content": "be brief"}])
        # the same text as a system message is another message: judged
        reply = request_check(client, [{"role": "system", "content": "be brief"}, {"role": "user", "content": "x"}])
    assert len(reply["wildguard"]) == 2


def test_without_messages_each_text_is_judged_as_before(tokenizer):
    with TestClient(marker_app(tokenizer)) as client:
        reply = guard(client, "request", ["be nice", f"now {HARMFUL}"])
        again = guard(client, "request", ["be nice", f"now {HARMFUL}"])
    assert reply["action"] == "BLOCKED" and "texts[1]: harmful request" in reply["blocked_reason"]
    assert len(reply["wildguard"]) == 2 and len(again["wildguard"]) == 1  # "be nice" was judged harmless


@pytest.mark.parametrize(
    "messages, last, new",
    [
        ([], None, None),  # no messages
        ([{"role": "user", "content": "a"}], "a", "a"),  # one turn
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "a", None),  # answered
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "a\n\nb", "a\n\nb"),  # one turn
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
        turn = request_check(client, chat(200, "capital of France?"), litellm_call_id="c1")
        assert turn["action"] == "NONE"
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


# -- undecided is not harmful while an answer streams --------------------------------------------
def rounds_of(client, call_id, texts, turn="hi"):
    request_check(client, [{"role": "user", "content": turn}], litellm_call_id=call_id)
    return [guard(client, "response", [t], litellm_call_id=call_id) for t in texts]


def test_an_undecided_start_is_held_back_not_blocked(tokenizer):
    # The model answers n/a while the reply is shorter than 12 characters (resolved: P=0.73).
    with TestClient(marker_app(tokenizer, na_below_chars=12)) as client:
        rounds = rounds_of(client, "u1", ["Hel", "Hello th", "Hello there, fri"])
        # a harmful start is not undecided: blocked on the first round
        harmful = rounds_of(client, "u2", [HARMFUL])
        # judged alone (no call id): undecided short text is held too, as a final reply would be
        alone = guard(client, "response", ["Hi"], structured_messages=[{"role": "user", "content": "hi"}])
    assert [r["action"] for r in rounds] == ["NONE"] * 3
    assert [r["stream_holdback_chars"] for r in rounds] == [[3], [8], [3]]  # all, all, the unfinished word
    assert rounds[0]["wildguard"][0]["na_resolved"] == ["response_harmfulness"]
    assert harmful[0]["action"] == "BLOCKED"
    assert alone["action"] == "NONE" and alone["stream_holdback_chars"] == [2]


def test_an_undecided_reply_holds_only_what_no_round_cleared_and_only_so_long(tokenizer):
    from wildguard_lite.server.guardrail import UNDECIDED_MAX_CHARS

    start = "Hello there, "
    long_tail = start + UNDECIDED + " " + "word " * (UNDECIDED_MAX_CHARS // 5)
    with TestClient(marker_app(tokenizer)) as client:
        rounds = rounds_of(client, "u3", [start, start + UNDECIDED + " a", long_tail])
        # another reply (not a continuation of the cleared text): nothing of it counts as cleared
        other = rounds_of(client, "u4", [start, "Bye " + UNDECIDED])
    assert [r["action"] for r in rounds] == ["NONE", "NONE", "BLOCKED"]
    assert rounds[0]["stream_holdback_chars"] == [0]
    assert rounds[1]["stream_holdback_chars"] == [len(UNDECIDED) + 2]  # the part after the cleared start
    assert "from P(yes), the model answered n/a" in rounds[2]["blocked_reason"]  # too long undecided
    assert other[1]["stream_holdback_chars"] == [len("Bye " + UNDECIDED)]


# -- a long turn is judged once: its replies are judged beside its end --------------------------
def test_a_reply_to_a_long_turn_is_judged_beside_the_turns_end(tokenizer):
    """A reply round costs the same whether the turn is 4 or 16 times the context: the turn was
    judged by the request check; each round judges the reply beside the turn's end, in one
    input (no windows)."""
    pad = "The river runs slowly past the old mill, and the baker opens at seven. "
    app = marker_app(tokenizer, n_ctx=1024)
    with TestClient(app) as client:
        pool = app.state.runtime["pool"]
        per_round, per_turn = {}, {}
        for name, turn in (("long", pad * 60 + f"then {HARMFUL}? "), ("longer", pad * 240 + f"then {HARMFUL}? ")):
            before = pool.tokens_evaluated()
            reply = request_check(client, [{"role": "user", "content": turn}], litellm_call_id=name)
            assert reply["action"] == "BLOCKED"  # the turn itself: judged whole, in windows
            assert len(reply["wildguard"]) == 2  # and its end, as the reply's checks place it
            per_turn[name] = pool.tokens_evaluated() - before
            before = pool.tokens_evaluated()
            rounds = [guard(client, "response", ["Sure. " * k], litellm_call_id=name) for k in (1, 5, 10)]
            per_round[name] = (pool.tokens_evaluated() - before) / len(rounds)
            assert all(r["action"] == "NONE" and "windows" not in r["wildguard"][0] for r in rounds)
            # the remembered end is what the reply answers: the marker near the end is in it
            remembered = app.state.prompt_memory.recall(name)
            assert remembered.endswith(f"then {HARMFUL}? ") and len(remembered) < len(pad) * 30
    print(f"tokens: per turn {per_turn}, per reply round {per_round}")
    assert per_turn["longer"] > 3 * per_turn["long"]
    assert per_round["longer"] <= 1.1 * per_round["long"], per_round
