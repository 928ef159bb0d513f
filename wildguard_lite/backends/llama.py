"""llama-cpp-python engine: ids in, last-position logits out."""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ModelFileError, require
from ..defaults import default_threads
from ..utils import capture_stderr
from .base import Backend, check_positions, check_threads, common_prefix_length




_PARAMS_LOCK = threading.Lock()


@contextlib.contextmanager
def _model_params(**fields):
    """Llama() takes no argument for some model params (use_extra_bufts); set them on the
    defaults it starts from, for the duration of one constructor call."""
    import llama_cpp.llama as module

    with _PARAMS_LOCK:
        original = module.llama_cpp.llama_model_default_params

        def patched():
            params = original()
            for name, value in fields.items():
                setattr(params, name, value)
            return params

        module.llama_cpp.llama_model_default_params = patched
        try:
            yield
        finally:
            module.llama_cpp.llama_model_default_params = original


def _quiet_logging() -> None:
    """Back to errors-only logging after a verbose load."""
    from llama_cpp._logger import set_verbose

    set_verbose(False)


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


class LlamaCppBackend(Backend):
    def __init__(self, path: str | os.PathLike, *, n_ctx: int, threads: int | None, flash_attn: bool = True,
                 use_mmap: bool = True, repack: bool = False, n_batch: int = 512,
                 prefix_cache: PrefixStateCache | None = None):
        llama_cpp = require("llama_cpp", "gguf")
        self._llama_cpp = llama_cpp
        from ..gguf_meta import read_gguf_info

        # Every hyperparameter llama.cpp asserts on is checked first (it aborts the process
        # otherwise), also when a backend is made without load().
        read_gguf_info(path)
        check_threads(threads)
        threads = threads or default_threads()
        # verbose=True only while loading, into a captured stderr: with verbose=False
        # llama-cpp-python sends llama.cpp's load log to /dev/null, and a failed load would say
        # nothing about why. The tail goes into the error; on success the log is dropped.
        try:
            # repack=False: the CPU backend's repacked weight copies crashed (SIGSEGV) on
            # multi-token batches of Q8_0/Q4_K files on this AMX machine, and they add a
            # second copy of the weights to RSS (docs/decisions.md: 7.8 GB for a 4.4 GB file).
            with capture_stderr() as log, _model_params(use_extra_bufts=repack):
                try:
                    self._llm = llama_cpp.Llama(
                        model_path=str(Path(path)),
                        n_ctx=n_ctx,
                        n_batch=min(n_batch, n_ctx),
                        n_threads=threads,
                        n_threads_batch=threads,
                        logits_all=False,
                        flash_attn=flash_attn,
                        use_mmap=use_mmap,
                        verbose=True,
                    )
                finally:
                    _quiet_logging()
            self._llm.verbose = False
        except (ValueError, RuntimeError, OSError, MemoryError) as exc:
            tail = log.tail()
            raise ModelFileError(f"{path}: llama.cpp could not load this model ({exc})"
                                 + (f"; llama.cpp said: {tail}" if tail else "")) from None
        self.n_ctx = self._llm.n_ctx()
        self.n_vocab = self._llm.n_vocab()
        self._evaluated: list[int] = []
        # Opt-in; may be assigned after construction and shared between backends of one model.
        self.prefix_cache = prefix_cache
        self.tokens_evaluated = 0  # a counter for benchmarks and metrics

    def next_logits(self, ids: Sequence[int]) -> np.ndarray:
        ids = list(ids)
        if not ids:
            raise ValueError("next_logits needs at least one token")
        if len(ids) > self.n_ctx:
            raise ValueError(f"{len(ids)} tokens exceed the context of {self.n_ctx}")
        # Keep the KV cache of the common prefix; at least one token must be evaluated to
        # produce logits.
        live = common_prefix_length(self._evaluated, ids)
        keep = min(live, len(ids) - 1)
        # A call that cuts into the live sequence starts a new one (a new item): only then is
        # the shared prefix cache consulted, and the new sequence saved once evaluated.
        new_sequence = self.prefix_cache is not None and (not self._evaluated or live < len(self._evaluated))
        if new_sequence:
            keep = self._restore_longest(ids, keep)
        self._llm.n_tokens = keep
        self._evaluated = self._evaluated[:keep]
        self._llm.eval(ids[keep:])
        self.tokens_evaluated += len(ids) - keep
        self._evaluated = ids
        if new_sequence:
            self.prefix_cache.put(ids, self._save_sequence())
        ptr = self._llama_cpp.llama_get_logits_ith(self._llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float32, copy=True)

    def logits_at(self, ids: Sequence[int], positions: Sequence[int]) -> list[np.ndarray]:
        """Logits at `positions` of `ids` from one evaluation of everything after the kept
        prefix (one llama_decode per n_batch tokens, logits requested only where asked)."""
        ids = [int(i) for i in ids]
        positions = check_positions(ids, positions)
        if len(ids) > self.n_ctx:
            raise ValueError(f"{len(ids)} tokens exceed the context of {self.n_ctx}")
        live = common_prefix_length(self._evaluated, ids)
        keep = min(live, positions[0])  # every asked position must be evaluated in this call
        new_sequence = self.prefix_cache is not None and (not self._evaluated or live < len(self._evaluated))
        if new_sequence:
            keep = self._restore_longest(ids[: positions[0] + 1], keep)
        self._llm.n_tokens = keep
        self._evaluated = []  # unknown until the decode succeeds
        found = self._decode_at(ids[keep:], [p - keep for p in positions])
        self.tokens_evaluated += len(ids) - keep
        self._evaluated = ids
        if new_sequence:
            self.prefix_cache.put(ids, self._save_sequence())
        return [found[p - keep] for p in positions]

    def _decode_at(self, tokens: list[int], offsets: list[int]) -> dict[int, np.ndarray]:
        """Llama.eval with logits kept at `offsets` (Llama.eval keeps only the last row)."""
        llm, want, found = self._llm, set(offsets), {}
        llm._ctx.kv_cache_seq_rm(-1, llm.n_tokens, -1)
        for start in range(0, len(tokens), llm.n_batch):
            chunk = tokens[start : start + llm.n_batch]
            n_past = llm.n_tokens
            llm._batch.set_batch(batch=chunk, n_past=n_past, logits_all=False)
            for j in range(len(chunk)):
                llm._batch.batch.logits[j] = (start + j) in want or j == len(chunk) - 1
            llm._ctx.decode(llm._batch)
            llm.input_ids[n_past : n_past + len(chunk)] = chunk
            llm.n_tokens += len(chunk)
            for j in range(len(chunk)):
                if start + j in want:
                    ptr = self._llama_cpp.llama_get_logits_ith(llm.ctx, j)
                    found[start + j] = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float32, copy=True)
        return found

    def _restore_longest(self, ids: list[int], keep: int) -> int:
        """Load the cached state sharing the longest prefix with `ids` if it beats the live
        KV cache; returns how many tokens need no evaluation."""
        found = self.prefix_cache.lookup(ids)
        reusable = None if found is None else min(found[0], len(ids) - 1)
        if reusable is None or reusable <= keep:
            self.prefix_cache.record(None)
            return keep
        _, key, state = found
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if not self._llama_cpp.llama_state_seq_set_data(self._llm.ctx, buffer, len(state), 0):
            self.prefix_cache.record(None)
            self._llm.n_tokens, self._evaluated = 0, []  # the KV cache is in an unknown state
            return 0
        self._evaluated = list(key)
        self.prefix_cache.record(reusable)
        return reusable

    def _save_sequence(self) -> bytes:
        ctx = self._llm.ctx
        size = self._llama_cpp.llama_state_seq_get_size(ctx, 0)
        buffer = (ctypes.c_uint8 * size)()
        written = self._llama_cpp.llama_state_seq_get_data(ctx, buffer, size, 0)
        return bytes(buffer)[:written]

    def close(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()
            self._llm = None
