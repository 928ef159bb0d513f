"""`POST /beta/litellm_basic_guardrail_api`: LiteLLM's Generic Guardrail API.

LiteLLM (guardrail `generic_guardrail_api`) posts `{"input_type": "request"|"response",
"texts": [...], "structured_messages": [...], "litellm_call_id": ..., ...}` and reads back
`{"action": "BLOCKED"|"NONE", "blocked_reason": ..., "stream_holdback_chars": [...]}`.

What is judged (docs/serving.md):
- `request` (pre_call) with `structured_messages` (LiteLLM's chat path sends the whole chat on
  every call; the client writes all of it, so none of it is trusted): every user turn (the
  user messages between two assistant messages, joined) and every system message, each as a
  prompt alone, unless this server already judged the same text harmless (`JudgedMemory`:
  content hashes, bounded). An honest chat re-sent each turn costs its new turn; a fabricated
  history costs its fabricated turns. Tool and assistant messages are not judged. Without
  `structured_messages` (other clients) each text is judged as a prompt (same memory).
- `response` (post_call, and each round of a streamed reply): each text is an assistant reply
  judged *with* the user's turn (its end: `prompt_tail`), so WildGuard's response-harm label
  decides (a refusal of a harmful prompt passes). The turn comes from `structured_messages`
  when sent, else from `PromptMemory` (what the request check of the same `litellm_call_id`
  remembered: LiteLLM sends no messages with responses). A reply whose prompt is unknown is
  judged alone, as a prompt.
- A verdict that cannot be read (`is_parsing_error`) blocks.
- Streaming (`streaming_transform_mode: incremental_diff`): every round judges the whole reply
  so far, and `stream_holdback_chars` holds back its unfinished last word, which LiteLLM sends
  only after a later round has judged it whole (or at the end, after the final round). An
  undecided verdict (n/a, or P(yes) inside `UNDECIDED_BAND`) holds back everything no round
  cleared instead of blocking, while that is at most `UNDECIDED_MAX_CHARS`; beyond, it decides
  as a final verdict does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..contract import LABEL_KEYS, LABEL_VALUES
from .errors import APIError, check_count, check_text
from .guard_memory import CallState, JudgedMemory, PromptMemory, message_key
from .settings import ServeSettings
from ..windows import tail_start

GUARDRAIL_PATH = "/beta/litellm_basic_guardrail_api"
INPUT_TYPES = ("request", "response")
CALL_ID_MAX_CHARS = 256
# A remembered turn keeps its last n_ctx x this many characters before it is cut to its tail
# (a token is rarely longer than 8 characters).
MEMORY_CHARS_PER_TOKEN = 8
# The unfinished last word of a streamed reply is held back up to this many characters (a long
# run without whitespace, a URL or code, is released once judged, like any text).
HOLDBACK_MAX_CHARS = 64
# A reply's P(yes) inside this band is undecided; so is an n/a (the model saw no answer yet).
UNDECIDED_BAND = (0.3, 0.7)
# An undecided reply holds back what no round cleared while that is at most this long: the
# start of an answer, a few words after the last cleared round (docs/integrations.md).
UNDECIDED_MAX_CHARS = 256
# A reply is judged beside the end of a long turn: at most 1/TAIL_SHARE of the context (every
# round's tokens attend to it: a longer end makes each round slower on a CPU).
TAIL_SHARE = 4
# LiteLLM sends a chat twice (texts and structured_messages): the endpoint's body limit is
# this many times --max-body-bytes.
BODY_COPIES = 2
# Messages that instruct the model ("developer": OpenAI's newer name for system): judged as prompts.
SYSTEM_ROLES = ("system", "developer")
PROMPT_KEY, _, RESPONSE_KEY = LABEL_KEYS
HARMLESS = LABEL_VALUES[PROMPT_KEY]["no"]
HARMFUL = LABEL_VALUES[RESPONSE_KEY]["yes"]


def memory_for(settings: ServeSettings) -> PromptMemory:
    return PromptMemory(clip_chars=settings.n_ctx * MEMORY_CHARS_PER_TOKEN)


@dataclass
class GuardrailCheck:
    """One parsed guardrail call: what to classify and how to read the verdicts."""

    input_type: str
    items: list[dict[str, Any]] = field(default_factory=list)
    paired: list[bool] = field(default_factory=list)  # per item: a reply judged with its prompt
    labels: list[str] = field(default_factory=list)  # per item: where it came from, for reasons
    keys: list[bytes | None] = field(default_factory=list)  # per item: its JudgedMemory key
    call_id: str | None = None
    remember: str | None = None  # the user turn to keep for this call's response checks
    texts: list[str] = field(default_factory=list)  # response texts, for the holdback
    state: CallState | None = None  # the call's memory (response checks)


def message_text(message: Any) -> str | None:
    """The text of a chat message: its string content, or its text parts joined by newlines."""
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        texts = [t for t in parts if isinstance(t, str)]
        return "\n".join(texts) if texts else None
    return None


def user_turns(messages: Any) -> tuple[str | None, str | None]:
    """(the new user turn, the last user turn) of a chat. The new turn is the text of the user
    messages after the last assistant message (None when the chat ends with no new user text:
    a tool result, an assistant prefill); the last turn is the latest one, old or new (a turn:
    the user messages between two assistant messages, joined)."""
    units = chat_units(messages)
    turns = [u for u in units if u[0] == "user"]
    new = turns[-1][1] if turns and turns[-1][3] else None
    return new, (turns[-1][1] if turns else None)


def chat_units(messages: Any) -> list[tuple[str, str, str, bool]]:
    """What a request check judges in a chat: (role, text, label, is the new turn) for every
    system message and every user turn (the user messages between two assistant messages,
    joined by a blank line, as the new turn always was)."""
    if not isinstance(messages, list):
        return []
    units: list[tuple[str, str, str, bool]] = []
    turn: list[tuple[int, str]] = []

    def flush(new: bool) -> None:
        if turn:
            first, last = turn[0][0], turn[-1][0]
            where = f"messages[{first}]" if first == last else f"messages[{first}..{last}]"
            label = "the last user turn" if new else f"{where}: an earlier user turn"
            units.append(("user", "\n\n".join(t for _, t in turn), label, new))
            turn.clear()

    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "assistant":
            flush(False)
        elif role in ("user", *SYSTEM_ROLES):
            text = message_text(message)
            if text is None:
                continue
            if role == "user":
                turn.append((i, text))
            else:
                units.append(("system", text, f"messages[{i}]: the {role} message", False))
    flush(True)
    return units


def parse_guardrail(
    body: Any, settings: ServeSettings, memory: PromptMemory, judged: JudgedMemory | None = None
) -> GuardrailCheck:
    if not isinstance(body, dict):
        raise APIError(
            422, f"request body must be a JSON object with 'input_type' and 'texts', got {type(body).__name__}"
        )
    input_type = body.get("input_type")
    if input_type not in INPUT_TYPES:
        raise APIError(
            422, f"'input_type' must be one of {', '.join(INPUT_TYPES)}, got {input_type!r}", param="input_type"
        )
    texts = body.get("texts")
    if texts is None:
        texts = []
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise APIError(422, "'texts' must be a list of strings", param="texts")
    if body.get("images"):
        raise APIError(
            422,
            "'images' is not supported: WildGuard judges text only; keep this guardrail on "
            "text traffic (moderate images with another model)",
            "unsupported_input",
            param="images",
        )
    messages = body.get("structured_messages")
    if messages is not None and not isinstance(messages, list):
        raise APIError(422, "'structured_messages' must be a list of chat messages", param="structured_messages")
    call_id = body.get("litellm_call_id")
    if call_id is not None and (not isinstance(call_id, str) or len(call_id) > CALL_ID_MAX_CHARS):
        got = f"{len(call_id)} characters" if isinstance(call_id, str) else type(call_id).__name__
        raise APIError(
            422,
            f"'litellm_call_id' must be a string of at most {CALL_ID_MAX_CHARS} characters, got {got} "
            "(LiteLLM sends a UUID; it pairs a reply's check with its request's)",
            param="litellm_call_id",
        )
    call_id = call_id or None
    new_turn, last_turn = user_turns(messages)
    # The turn a reply answers: the new one, or (a tool result, a prefill) the latest one.
    turn = new_turn if new_turn is not None else last_turn
    if turn is not None:
        turn = check_text(turn, "structured_messages")
    check = GuardrailCheck(input_type, call_id=call_id)
    if input_type == "request" and messages:
        # The chat: every user turn and system message this server has not judged harmless.
        for role, text, label, _ in chat_units(messages):
            add_prompt(check, check_text(text, "structured_messages"), label, message_key(role, text), judged)
        check.remember = turn
        return check
    if texts:
        check_count(len(texts), "texts", settings)
    texts = [check_text(t, f"texts[{i}]") for i, t in enumerate(texts)]
    labels = [f"texts[{i}]" for i in range(len(texts))]
    if input_type == "request":
        for i, text in enumerate(texts):
            add_prompt(check, text, labels[i], message_key("text", text), judged)
        check.remember = texts[-1] if texts else None
        return check
    check.texts, check.labels = texts, labels
    if turn is None and call_id is not None:
        check.state = memory.state(call_id)
    prompt = turn if turn is not None else check.state.prompt if check.state is not None else None
    if prompt is None:
        check.items, check.paired = [{"prompt": t} for t in texts], [False] * len(texts)
    else:
        check.items, check.paired = [{"prompt": prompt, "response": t} for t in texts], [True] * len(texts)
    check.keys = [None] * len(texts)
    return check


def add_prompt(check: GuardrailCheck, text: str, label: str, key: bytes, judged: JudgedMemory | None) -> None:
    """Judge `text` as a prompt unless it was judged harmless before (or earlier in this call)."""
    if key in check.keys or (judged is not None and judged.known(key)):
        return
    check.items.append({"prompt": text})
    check.paired.append(False)
    check.labels.append(label)
    check.keys.append(key)


def undecided(result: dict[str, Any]) -> bool:
    """A reply verdict the model did not make: n/a (resolved from P(yes), or not), or P(yes)
    inside UNDECIDED_BAND."""
    key = RESPONSE_KEY
    score = (result.get("scores") or {}).get(key)
    return (
        result.get(key) is None
        or key in result.get("na_resolved", ())
        or (score is not None and UNDECIDED_BAND[0] <= score <= UNDECIDED_BAND[1])
    )


def guardrail_reply(
    check: GuardrailCheck,
    results: list[dict[str, Any]],
    memory: PromptMemory,
    judged: JudgedMemory | None = None,
    remember: str | None = None,
) -> dict[str, Any]:
    """BLOCKED with every reason found, or NONE with what a streamed reply must still hold
    back; the judged user turn (`remember`, or the check's) is kept for the reply's checks and
    the prompts judged harmless in `judged`; the WildGuard results ride along."""
    reasons = []
    holdback: list[int] = []
    for i, (result, with_prompt, where) in enumerate(zip(results, check.paired, check.labels)):
        key, what = (
            (RESPONSE_KEY, "harmful response")
            if with_prompt
            else (
                PROMPT_KEY,
                (
                    "harmful request"
                    if check.input_type == "request"
                    else "harmful content (response judged without its prompt)"
                ),
            )
        )
        if result.get("not_judged"):  # too long or too late to judge within --timeout (server/budget.py)
            reasons.append(f"{where}: not judged: {result['not_judged']['message']}")
            continue  # no verdict: never recorded as cleared or judged harmless
        if result.get("is_parsing_error"):
            reasons.append(f"{where}: the WildGuard verdict could not be read; blocked to fail closed")
            continue
        if with_prompt:
            text = check.texts[i]
            cleared = check.state.cleared_in(i, text) if check.state is not None else 0
            if undecided(result) and len(text) - cleared <= UNDECIDED_MAX_CHARS:
                holdback.append(len(text) - cleared)  # not a verdict yet: wait for more text
                continue
        if result.get(key) == HARMFUL:
            score = (result.get("scores") or {}).get(key)
            resolved = " from P(yes), the model answered n/a" if key in result.get("na_resolved", ()) else ""
            reasons.append(f"{where}: {what}" + (f" (P={score:.2f}{resolved})" if score is not None else ""))
        elif check.input_type == "response":
            held = unfinished_word(check.texts[i])
            holdback.append(held)
            if with_prompt and check.state is not None:
                check.state.clear(i, check.texts[i], len(check.texts[i]) - held)
        elif judged is not None and i < len(check.keys) and result.get(key) == HARMLESS:
            judged_key = check.keys[i]
            if judged_key is not None:
                judged.add(judged_key)
    turn = remember if remember is not None else check.remember
    if turn is not None and check.call_id is not None:
        memory.remember(check.call_id, turn)
    reply: dict[str, Any] = {"action": "BLOCKED" if reasons else "NONE", "wildguard": results}
    if reasons:
        reply["blocked_reason"] = "wildguard-lite: " + "; ".join(reasons)
    elif check.input_type == "response":
        reply["stream_holdback_chars"] = holdback
    return reply


def unfinished_word(text: str) -> int:
    """Characters after the text's last whitespace (at most HOLDBACK_MAX_CHARS): a word a
    streamed reply may still be writing, which its next round judges whole."""
    n = 0
    for char in reversed(text[-HOLDBACK_MAX_CHARS:]):
        if char.isspace():
            return n
        n += 1
    return n


def prompt_tail(text: str, tokenizer, n_ctx: int) -> str:
    """The end of a user turn that a reply is judged beside: what fits a quarter of the context
    (TAIL_SHARE; the reply keeps at least half, as in wildguard_lite/windows.py), cut at a word.
    The same turn gives the same tail every round, so the engine reuses its KV."""
    capacity = n_ctx // TAIL_SHARE
    if len(text) + 64 <= capacity:  # a token holds at least one character: it fits
        return text
    return text[tail_start(text, lambda t: tokenizer.encode_exchange(t, "x"), capacity) :]


class Guardrail:
    """The endpoint's state (the memories) and its flow: parse, judge, answer. `tail(text)` is
    the end of a user turn that a reply is judged beside (computed once per call, off the
    event loop): a reply round then costs the reply, not the turn's windows."""

    def __init__(self, settings: ServeSettings, tail: Callable[[str], str] | None = None):
        self.settings, self.tail = settings, tail
        self.memory = memory_for(settings)
        self.judged = JudgedMemory()

    async def handle(self, body: Any, run: Callable[[list[dict[str, Any]]], Awaitable[list[dict[str, Any]]]]):
        check = parse_guardrail(body, self.settings, self.memory, self.judged)
        if check.input_type == "response" and check.paired and check.state is None and self.tail is not None:
            # A turn sent with the reply (not remembered): cut it to its end here.
            prompt = await asyncio.to_thread(self.tail, check.items[0]["prompt"])
            check.items = [{**item, "prompt": prompt} for item in check.items]
        remember = None
        if check.remember is not None and check.call_id is not None and self.tail is not None:
            remember = await asyncio.to_thread(self.tail, check.remember)
            if remember != check.remember and any(item["prompt"] == check.remember for item in check.items):
                # A long turn judged now: its end too, as the reply's checks will place it, so the
                # engine holds its KV before the reply streams (its first round costs the reply).
                check.items.append({"prompt": remember})
                check.paired.append(False)
                check.labels.append("the last user turn's end")
                check.keys.append(None)
        results = await run(check.items) if check.items else []
        return guardrail_reply(check, results, self.memory, self.judged, remember)
