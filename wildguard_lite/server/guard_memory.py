"""What the guardrail endpoint remembers between LiteLLM's calls, bounded in entries, bytes and
age (no traffic can grow it without limit):

- `PromptMemory`: litellm_call_id -> the call's state: the user turn its request check judged
  (its end, as a reply round places it beside the reply) and, per streamed reply, how much of
  the reply a round has cleared (docs/serving.md, "Streamed replies").
- `JudgedMemory`: content hashes of the chat messages this server already judged harmless, so a
  chat re-sent every turn costs its new turn while a fabricated history is judged.
"""

from __future__ import annotations

import builtins
import hashlib
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

# PromptMemory: a response follows its request within the upstream model's latency (a long
# streamed answer: minutes); entries and bytes are capped so no traffic can grow it unbounded.
MEMORY_TTL_S = 900.0
MEMORY_MAX_ENTRIES = 4096
MEMORY_MAX_BYTES = 32 << 20
# JudgedMemory: a conversation re-sends its history for as long as it lasts; every use of an
# entry renews it, so only a history untouched this long is judged again (once).
JUDGED_TTL_S = 3600.0
JUDGED_MAX_ENTRIES = 200_000
JUDGED_MAX_BYTES = 32 << 20
# Bytes one JudgedMemory entry holds: its 32-byte digest as a bytes object, its timestamp, and
# its share of the ordered dict (measured with tracemalloc on CPython 3.12: ~190).
JUDGED_ENTRY_BYTES = 200

V = TypeVar("V")


class BoundedMemory(Generic[V]):
    """key -> value, least recently stored (or used, with `renew`) dropped first beyond
    `max_entries` or `max_bytes`, and expired by age on every use."""

    def __init__(self, max_entries: int, max_bytes: int, ttl_s: float, clock=time.monotonic, renew: bool = False):
        self.max_entries, self.max_bytes, self.ttl_s, self.renew = max_entries, max_bytes, ttl_s, renew
        self.bytes = 0
        self._clock = clock
        self._entries: OrderedDict[Any, tuple[float, V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: Any, value: V, size: int) -> None:
        with self._lock:
            now = self._clock()
            self._expire(now)
            self._drop(key)
            self._entries[key] = (now, value, size)
            self.bytes += size
            while self._entries and (len(self._entries) > self.max_entries or self.bytes > self.max_bytes):
                self._drop(next(iter(self._entries)))

    def get(self, key: Any) -> V | None:
        with self._lock:
            now = self._clock()
            self._expire(now)
            entry = self._entries.get(key)
            if entry is None:
                return None
            if self.renew:
                self._entries[key] = (now, entry[1], entry[2])
                self._entries.move_to_end(key)
            return entry[1]

    def _expire(self, now: float) -> None:
        # Entries sit in the order they were stored (or renewed): the expired ones are first.
        while self._entries:
            key, (when, _, _) = next(iter(self._entries.items()))
            if now - when <= self.ttl_s:
                return
            self._drop(key)

    def _drop(self, key: Any) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry[2]


@dataclass
class CallState:
    """One call's memory: the user turn a reply answers (its end), and per reply (LiteLLM's
    text index) the characters a round cleared, with the digest of that prefix (a later round
    continues the same reply only if its text starts with it)."""

    prompt: str
    cleared: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def cleared_in(self, index: int, text: str) -> int:
        """How many leading characters of `text` a round of this reply already cleared."""
        with self.lock:
            n, digest = self.cleared.get(index, (0, b""))
        return n if n <= len(text) and digest_of(text[:n]) == digest else 0

    def clear(self, index: int, text: str, upto: int) -> None:
        with self.lock:
            self.cleared[index] = (upto, digest_of(text[:upto]))


class PromptMemory:
    """litellm_call_id -> `CallState`: the user turn its request check judged, for the response
    checks of the same call. Bounded in entries and bytes (least recently remembered goes
    first), clipped per entry to what a check can use, and expired by age."""

    def __init__(
        self,
        clip_chars: int,
        max_entries: int = MEMORY_MAX_ENTRIES,
        max_bytes: int = MEMORY_MAX_BYTES,
        ttl_s: float = MEMORY_TTL_S,
        clock=time.monotonic,
    ):
        self.clip_chars = clip_chars
        self._memory: BoundedMemory[CallState] = BoundedMemory(max_entries, max_bytes, ttl_s, clock)

    def __len__(self) -> int:
        return len(self._memory)

    @property
    def bytes(self) -> int:
        return self._memory.bytes

    def remember(self, call_id: str, prompt: str) -> None:
        prompt = prompt[-self.clip_chars :] if len(prompt) > self.clip_chars else prompt
        # The per-reply digests are a few hundred bytes; counted in the entry's size.
        size = sys.getsizeof(prompt) + sys.getsizeof(call_id) + 512
        self._memory.put(call_id, CallState(prompt), size)

    def recall(self, call_id: str) -> str | None:
        state = self._memory.get(call_id)
        return None if state is None else state.prompt

    def state(self, call_id: str) -> CallState | None:
        return self._memory.get(call_id)


def digest_of(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def message_key(role: str, text: str) -> bytes:
    """A message's identity: the hash of its role and its text (a system message and a user
    message with the same text are judged apart)."""
    return digest_of(f"{role}\x00{text}")


class JudgedMemory:
    """Content hashes of messages this server judged harmless. Only the hash is kept (never the
    text); each use renews an entry, so an ongoing conversation's history stays known."""

    def __init__(
        self,
        max_entries: int = JUDGED_MAX_ENTRIES,
        max_bytes: int = JUDGED_MAX_BYTES,
        ttl_s: float = JUDGED_TTL_S,
        clock=time.monotonic,
    ):
        self._memory: BoundedMemory[bool] = BoundedMemory(max_entries, max_bytes, ttl_s, clock, renew=True)

    def __len__(self) -> int:
        return len(self._memory)

    @property
    def bytes(self) -> int:
        return self._memory.bytes

    def known(self, key: builtins.bytes) -> bool:  # `bytes` here is the property above
        return self._memory.get(key) is not None

    def add(self, key: builtins.bytes) -> None:
        self._memory.put(key, True, JUDGED_ENTRY_BYTES)
