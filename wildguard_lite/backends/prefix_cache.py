"""A bounded LRU of llama.cpp KV states keyed by token sequence, shared by engines of one model."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass
class PrefixCacheStats:
    hits: int = 0
    misses: int = 0
    tokens_reused: int = 0  # tokens restored from a saved state instead of evaluated
    evictions: int = 0


class PrefixStateCache:
    """A bounded LRU of KV states keyed by token sequence, shared by the contexts of one model.

    Made for the two-phase guardrail pattern: a gateway checks a prompt, then the same prompt
    with the assistant's response, possibly on another worker and after other requests. The
    state of the first call's sequence lets the second evaluate only what follows the common
    prefix. States are llama.cpp sequence snapshots (KV only, no logits), restored exactly.
    Thread-safe; entries are immutable bytes, so any context of the same model may load them.
    """

    def __init__(self, max_bytes: int, max_entries: int = 256, min_reuse: int = 8):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.min_reuse = min_reuse  # below this many tokens a restore is not worth a copy
        self.bytes = 0
        self.stats = PrefixCacheStats()
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[int, ...], tuple[np.ndarray, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: Sequence[int]) -> tuple[int, tuple[int, ...], bytes] | None:
        """(reusable length, key, state) of the entry sharing the longest prefix with `ids`."""
        query = np.asarray(ids, dtype=np.int64)
        best: tuple[int, tuple[int, ...], bytes] | None = None
        with self._lock:
            for key, (array, state) in self._entries.items():
                n = min(len(array), len(query))
                diff = np.flatnonzero(array[:n] != query[:n])
                common = int(diff[0]) if diff.size else n
                if common >= self.min_reuse and (best is None or common > best[0]):
                    best = (common, key, state)
            if best is not None:
                self._entries.move_to_end(best[1])
        return best

    def put(self, ids: Sequence[int], state: bytes) -> None:
        key = tuple(ids)
        if len(state) > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= len(old[1])
            self._entries[key] = (np.asarray(key, dtype=np.int64), state)
            self.bytes += len(state)
            while self.bytes > self.max_bytes or len(self._entries) > self.max_entries:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= len(evicted)
                self.stats.evictions += 1

    def record(self, reused: int | None) -> None:
        with self._lock:
            if reused is None:
                self.stats.misses += 1
            else:
                self.stats.hits += 1
                self.stats.tokens_reused += reused
