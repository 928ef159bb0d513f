"""`POST /beta/litellm_basic_guardrail_api`: LiteLLM's Generic Guardrail API.

LiteLLM (guardrail `generic_guardrail_api`) posts `{"input_type": "request"|"response",
"texts": [...], "structured_messages": [...], "litellm_call_id": ..., ...}` and reads back
`{"action": "BLOCKED"|"NONE", "blocked_reason": ..., "stream_holdback_chars": [...]}`.

What is judged (docs/serving.md):
- `request` (pre_call) with `structured_messages` (LiteLLM's chat path sends the whole chat on
  every call): only the new user turn, the user messages after the last assistant message,
  judged as one prompt with no earlier context. History, system and tool messages are not
  judged again, so a long chat costs what its last turn costs. Without `structured_messages`
  (other clients) each text is judged as a prompt.
- `response` (post_call, and each round of a streamed reply): each text is an assistant reply
  judged *with* the user's last turn, so WildGuard's response-harm label decides (a refusal of
  a harmful prompt passes). The turn comes from `structured_messages` when sent, else from
  `PromptMemory` (the turn the request check of the same `litellm_call_id` judged:
  LiteLLM sends no messages with responses). A reply whose prompt is unknown is judged alone.
- A verdict that cannot be read (`is_parsing_error`) blocks.
- Streaming (`streaming_transform_mode: incremental_diff`): every round judges the whole reply
  so far, and `stream_holdback_chars` holds back its unfinished last word, which LiteLLM sends
  only after a later round has judged it whole (or at the end, after the final round).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .errors import APIError, check_count, check_text
from .settings import ServeSettings

GUARDRAIL_PATH = "/beta/litellm_basic_guardrail_api"
INPUT_TYPES = ("request", "response")
CALL_ID_MAX_CHARS = 256
# PromptMemory: a response follows its request within the upstream model's latency (a long
# streamed answer: minutes); entries and bytes are capped so no traffic can grow it unbounded.
MEMORY_TTL_S = 900.0
MEMORY_MAX_ENTRIES = 4096
MEMORY_MAX_BYTES = 32 << 20
# A remembered turn keeps its last n_ctx x this many characters: more than a response check can
# place beside a reply (a token is rarely longer than 8 characters; the windows keep the
# prompt's end, docs/long-inputs.md).
MEMORY_CHARS_PER_TOKEN = 8
# The unfinished last word of a streamed reply is held back up to this many characters (a long
# run without whitespace, a URL or code, is released once judged, like any text).
HOLDBACK_MAX_CHARS = 64


class PromptMemory:
    """litellm_call_id -> the user turn its request check judged, for the response checks of
    the same call. Bounded in entries and bytes (least recently remembered goes first),
    clipped per entry to what a check can use, and expired by age on every use, whether or not
    an entry is ever looked up."""

    def __init__(
        self,
        clip_chars: int,
        max_entries: int = MEMORY_MAX_ENTRIES,
        max_bytes: int = MEMORY_MAX_BYTES,
        ttl_s: float = MEMORY_TTL_S,
        clock=time.monotonic,
    ):
        self.clip_chars, self.max_entries, self.max_bytes, self.ttl_s = clip_chars, max_entries, max_bytes, ttl_s
        self.bytes = 0
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, str, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, call_id: str, prompt: str) -> None:
        prompt = prompt[-self.clip_chars :] if len(prompt) > self.clip_chars else prompt
        size = sys.getsizeof(prompt) + sys.getsizeof(call_id)
        with self._lock:
            now = self._clock()
            self._expire(now)
            self._drop(call_id)
            self._entries[call_id] = (now, prompt, size)
            self.bytes += size
            while self._entries and (len(self._entries) > self.max_entries or self.bytes > self.max_bytes):
                self._drop(next(iter(self._entries)))

    def recall(self, call_id: str) -> str | None:
        with self._lock:
            self._expire(self._clock())
            entry = self._entries.get(call_id)
        return None if entry is None else entry[1]

    def _expire(self, now: float) -> None:
        # Entries sit in the order they were remembered: the expired ones are at the front.
        while self._entries:
            key, (when, _, _) = next(iter(self._entries.items()))
            if now - when <= self.ttl_s:
                return
            self._drop(key)

    def _drop(self, call_id: str) -> None:
        entry = self._entries.pop(call_id, None)
        if entry is not None:
            self.bytes -= entry[2]


def memory_for(settings: ServeSettings) -> PromptMemory:
    return PromptMemory(clip_chars=settings.n_ctx * MEMORY_CHARS_PER_TOKEN)


@dataclass
class GuardrailCheck:
    """One parsed guardrail call: what to classify and how to read the verdicts."""

    input_type: str
    items: list[dict[str, Any]] = field(default_factory=list)
    paired: list[bool] = field(default_factory=list)  # per item: a reply judged with its prompt
    labels: list[str] = field(default_factory=list)  # per item: where it came from, for reasons
    call_id: str | None = None
    remember: str | None = None  # the user turn to keep for this call's response checks
    texts: list[str] = field(default_factory=list)  # response texts, for the holdback


def message_text(message: Any) -> str | None:
    """The text of a chat message: its string content, or its text parts joined by newlines."""
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        texts = [t for t in texts if isinstance(t, str)]
        return "\n".join(texts) if texts else None
    return None


def user_turns(messages: Any) -> tuple[str | None, str | None]:
    """(the new user turn, the last user turn) of a chat. The new turn is the text of the user
    messages after the last assistant message (None when the chat ends with no new user text:
    a tool result, an assistant prefill); the last turn is the latest one, old or new."""
    if not isinstance(messages, list):
        return None, None
    new: list[str] = []
    last = None
    seen_assistant = False
    for message in reversed(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "assistant":
            seen_assistant = True
        elif role == "user":
            text = message_text(message)
            if text is None:
                continue
            if last is None:
                last = text
            if not seen_assistant:
                new.append(text)
            else:
                break
    return ("\n\n".join(reversed(new)) if new else None), last


def parse_guardrail(body: Any, settings: ServeSettings, memory: PromptMemory) -> GuardrailCheck:
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
        # The chat: judge its new user turn only; keep it for the reply's checks.
        if new_turn is not None:
            check.items, check.paired, check.labels = [{"prompt": turn}], [False], ["the last user turn"]
        check.remember = turn
        return check
    if texts:
        check_count(len(texts), "texts", settings)
    texts = [check_text(t, f"texts[{i}]") for i, t in enumerate(texts)]
    labels = [f"texts[{i}]" for i in range(len(texts))]
    if input_type == "request":
        check.items, check.paired, check.labels = [{"prompt": t} for t in texts], [False] * len(texts), labels
        check.remember = texts[-1] if texts else None
        return check
    prompt = turn if turn is not None else memory.recall(call_id) if call_id is not None else None
    check.texts, check.labels = texts, labels
    if prompt is None:
        check.items, check.paired = [{"prompt": t} for t in texts], [False] * len(texts)
    else:
        check.items, check.paired = [{"prompt": prompt, "response": t} for t in texts], [True] * len(texts)
    return check


def guardrail_reply(check: GuardrailCheck, results: list[dict[str, Any]], memory: PromptMemory) -> dict[str, Any]:
    """BLOCKED with every reason found, or NONE with a response's unfinished last word held
    back; the judged user turn is remembered for the reply's checks; the WildGuard results
    ride along."""
    reasons = []
    for result, with_prompt, where in zip(results, check.paired, check.labels):
        key, what = (
            ("response_harmfulness", "harmful response")
            if with_prompt
            else (
                "prompt_harmfulness",
                (
                    "harmful request"
                    if check.input_type == "request"
                    else "harmful content (response judged without its prompt)"
                ),
            )
        )
        if result.get("not_judged"):  # too long or too late to judge within --timeout (server/budget.py)
            reasons.append(f"{where}: not judged: {result['not_judged']['message']}")
        elif result.get("is_parsing_error"):
            reasons.append(f"{where}: the WildGuard verdict could not be read; blocked to fail closed")
        elif result.get(key) == "harmful":
            score = (result.get("scores") or {}).get(key)
            resolved = " from P(yes), the model answered n/a" if key in result.get("na_resolved", ()) else ""
            reasons.append(f"{where}: {what}" + (f" (P={score:.2f}{resolved})" if score is not None else ""))
    if check.remember is not None and check.call_id is not None:
        memory.remember(check.call_id, check.remember)
    reply: dict[str, Any] = {"action": "BLOCKED" if reasons else "NONE", "wildguard": results}
    if reasons:
        reply["blocked_reason"] = "wildguard-lite: " + "; ".join(reasons)
    elif check.input_type == "response":
        reply["stream_holdback_chars"] = [unfinished_word(t) for t in check.texts]
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
