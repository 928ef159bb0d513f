"""`POST /beta/litellm_basic_guardrail_api`: LiteLLM's Generic Guardrail API.

LiteLLM (guardrail `generic_guardrail_api`) posts `{"input_type": "request"|"response",
"texts": [...], "structured_messages": [...], "litellm_call_id": ..., ...}` and reads back
`{"action": "BLOCKED"|"NONE", "blocked_reason": ...}`.

- `request` (pre_call): each text is judged as a user prompt; blocked when one is harmful.
- `response` (post_call): each text is an assistant response, judged *with* the user's last
  message, so WildGuard's response-harm label decides (a refusal of a harmful prompt passes).
  The prompt comes from `structured_messages` when sent; LiteLLM 1.106 sends none with
  responses, so the server also remembers the last user message of each `request` check by
  `litellm_call_id` (a guardrail in `[pre_call, post_call]` mode sends both). A response whose
  prompt is unknown is judged alone, as a prompt (what the openai_moderation guardrail does).
- A verdict that cannot be read (`is_parsing_error`) blocks.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from .errors import APIError, check_count, check_text
from .settings import ServeSettings

GUARDRAIL_PATH = "/beta/litellm_basic_guardrail_api"
INPUT_TYPES = ("request", "response")
CALL_ID_MAX_CHARS = 256


class PromptMemory:
    """litellm_call_id -> the user's last message, for pairing the response check with its
    request check. Bounded (LRU) and short-lived: a call's response follows its request within
    the upstream model's latency."""

    def __init__(self, max_entries: int = 4096, ttl_s: float = 900.0):
        self.max_entries, self.ttl_s = max_entries, ttl_s
        self._entries: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, call_id: str, prompt: str) -> None:
        with self._lock:
            self._entries[call_id] = (time.monotonic(), prompt)
            self._entries.move_to_end(call_id)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def recall(self, call_id: str) -> str | None:
        with self._lock:
            entry = self._entries.get(call_id)
        if entry is None or time.monotonic() - entry[0] > self.ttl_s:
            return None
        return entry[1]


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


def last_user_message(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message)
    return None


def parse_guardrail(body: Any, settings: ServeSettings, memory: PromptMemory) -> tuple[str, list[dict], list[bool]]:
    """(input_type, items to classify, per item: judged with its prompt)."""
    if not isinstance(body, dict):
        raise APIError(422, f"request body must be a JSON object with 'input_type' and 'texts', got {type(body).__name__}")
    input_type = body.get("input_type")
    if input_type not in INPUT_TYPES:
        raise APIError(422, f"'input_type' must be one of {', '.join(INPUT_TYPES)}, got {input_type!r}",
                       param="input_type")
    texts = body.get("texts")
    if texts is None:
        texts = []
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise APIError(422, "'texts' must be a list of strings", param="texts")
    if body.get("images"):
        raise APIError(422, "'images' is not supported: WildGuard judges text only; keep this guardrail on "
                            "text traffic (moderate images with another model)", "unsupported_input", param="images")
    messages = body.get("structured_messages")
    if messages is not None and not isinstance(messages, list):
        raise APIError(422, "'structured_messages' must be a list of chat messages", param="structured_messages")
    if texts:
        check_count(len(texts), "texts", settings)
    texts = [check_text(t, f"texts[{i}]") for i, t in enumerate(texts)]
    call_id = body.get("litellm_call_id")
    call_id = call_id if isinstance(call_id, str) and 0 < len(call_id) <= CALL_ID_MAX_CHARS else None
    prompt = last_user_message(messages)
    if prompt is not None:
        prompt = check_text(prompt, "structured_messages")
    if input_type == "request":
        if call_id is not None and (prompt is not None or texts):
            memory.remember(call_id, prompt if prompt is not None else texts[-1])
        return input_type, [{"prompt": t} for t in texts], [False] * len(texts)
    if prompt is None and call_id is not None:
        prompt = memory.recall(call_id)
    if prompt is None:
        return input_type, [{"prompt": t} for t in texts], [False] * len(texts)
    return input_type, [{"prompt": prompt, "response": t} for t in texts], [True] * len(texts)


def guardrail_reply(input_type: str, results: list[dict[str, Any]], paired: list[bool]) -> dict[str, Any]:
    """BLOCKED with the first reason found, or NONE; the WildGuard results ride along."""
    reasons = []
    for i, (result, with_prompt) in enumerate(zip(results, paired)):
        key, what = ("response_harmfulness", "harmful response") if with_prompt else ("prompt_harmfulness", (
            "harmful request" if input_type == "request" else "harmful content (response judged without its prompt)"))
        where = f"texts[{i}]"
        if result.get("is_parsing_error"):
            reasons.append(f"{where}: the WildGuard verdict could not be read; blocked to fail closed")
        elif result.get(key) == "harmful":
            score = (result.get("scores") or {}).get(key)
            reasons.append(f"{where}: {what}" + (f" (P={score:.2f})" if score is not None else ""))
    reply: dict[str, Any] = {"action": "BLOCKED" if reasons else "NONE", "wildguard": results}
    if reasons:
        reply["blocked_reason"] = "wildguard-lite: " + "; ".join(reasons)
    return reply
