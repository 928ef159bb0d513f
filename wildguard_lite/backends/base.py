"""The engine seam: what the Classifier asks of an engine, and the adapter for serial engines.

An `Engine` is what the Classifier calls: `logits_at(ids, positions, interrupt)` (and
`next_logits`), safe from any thread, stopping early when the call's `Interrupt` says so. The
llama.cpp engine is one natively (many sequences, calls batched into rounds). A `Backend` is
the simpler contract of an engine that runs one sequence for one caller at a time (ONNX, the
test fakes): `SerialEngine` adapts it, entering it one call at a time and checking the
interrupt before each engine step. `as_engine` gives the Engine of either.
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import ClassificationCancelled, ClassificationTimeout, InvalidInputError


def check_interrupt(cancel: Any, timeout: Any) -> None:
    """A call's `cancel` must be a threading.Event and its `timeout` a finite number of seconds
    from 0 (or None): anything else is refused before the call queues (NaN compared false to
    every deadline and meant none; a non-Event failed later, on the scheduler's thread)."""
    if cancel is not None and not isinstance(cancel, threading.Event):
        raise TypeError(
            f"cancel must be a threading.Event (set it from another thread to stop the call), got {type(cancel).__name__}"
        )
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, got {type(timeout).__name__}")
    if not math.isfinite(timeout) or timeout < 0:
        raise InvalidInputError(
            f"timeout must be a finite number of seconds from 0 (None: no deadline), got {timeout!r}"
        )


@dataclass(frozen=True)
class Interrupt:
    """Why a call may stop early: `cancel` (a threading.Event set by the caller) and/or
    `deadline` (a time.monotonic() value)."""

    cancel: threading.Event | None = None
    deadline: float | None = None

    @classmethod
    def make(cls, cancel: threading.Event | None = None, timeout: float | None = None) -> "Interrupt | None":
        """The interrupt of a call's `cancel` and `timeout` arguments, checked (`check_interrupt`)."""
        check_interrupt(cancel, timeout)
        if cancel is None and timeout is None:
            return None
        return cls(cancel, None if timeout is None else time.monotonic() + timeout)

    def reason(self) -> str | None:
        if self.cancel is not None and self.cancel.is_set():
            return "cancelled"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "timeout"
        return None

    def check(self) -> None:
        """Raise the matching error when interrupted."""
        why = self.reason()
        if why == "cancelled":
            raise ClassificationCancelled("the call was cancelled; the engine stopped its work")
        if why == "timeout":
            raise ClassificationTimeout("the call ran past its deadline; the engine stopped its work")


def interrupted(interrupt: Interrupt | None) -> bool:
    return interrupt is not None and interrupt.reason() is not None


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class EngineStats:
    """Public counters of an engine that runs rounds (benchmarks, /metrics)."""

    decode_calls: int = 0  # llama_decode calls
    rounds: int = 0  # batched rounds (one per group of coinciding requests)
    requests: int = 0
    aborted: int = 0  # rounds stopped inside the engine by cancellation or a deadline
    evictions: int = 0  # idle sequences dropped to make room in the KV pool
    prefix_copies: int = 0  # prefixes shared from another sequence instead of evaluated


class Engine(ABC):
    """What the Classifier calls; every method may be called from several threads at once."""

    n_ctx: int  # tokens one call may use
    n_vocab: int
    # Calls the engine runs at once (aio sizes its thread pool by it).
    slots: int = 1
    # Whether one `logits_at` call reads several positions from one evaluation (else the
    # Classifier asks for one cue at a time, so no position is evaluated on a wrong guess).
    multi_position: bool = True
    # Tokens a stream's next check drops from its previous one (the Classifier sets it from
    # its template); an engine holding several sequences uses it to tell which one a call extends.
    extension_slack: int = 0
    # Tokens run through the model (not reused from a KV cache), for reports and metrics.
    tokens_evaluated: int = 0
    # Round counters, for an engine that runs rounds (None: it runs none).
    stats: EngineStats | None = None

    @abstractmethod
    def logits_at(
        self, ids: Sequence[int], positions: Sequence[int], interrupt: Interrupt | None = None
    ) -> list[np.ndarray]:
        """Logits (float32, `(n_vocab,)` each) at `positions` of `ids`: those at position `i`
        predict the token after `ids[: i + 1]`. Raises ClassificationCancelled /
        ClassificationTimeout when `interrupt` stops the call."""

    def feed_piece(self, ids: Sequence[int], interrupt: Interrupt | None = None) -> None:
        """Evaluate `ids` into the call's sequence ahead of its real call (a piece of a long
        input: generation.fed); an engine running rounds may let waiting calls go first."""
        self.logits_at(ids, [len(ids) - 1], interrupt)

    def next_logits(self, ids: Sequence[int], interrupt: Interrupt | None = None) -> np.ndarray:
        """Logits for the token that follows `ids`."""
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("next_logits needs at least one token")
        return self.logits_at(ids, [len(ids) - 1], interrupt)[0]

    def close(self) -> None:
        """Release the engine's memory (optional)."""


class Backend(ABC):
    """A serial engine: a causal LM that returns next-token logits for a token sequence, for
    one caller at a time, with no way to stop mid-call (`SerialEngine` adapts it).

    Implementations keep the KV state of the last sequence and re-evaluate only the part of
    `ids` after the longest common prefix, so the constant instruction prefix, the cues of
    score mode and the steps of generation are each evaluated once.
    """

    n_ctx: int
    n_vocab: int
    # Tokens run through the model (not reused from the KV cache), for reports and metrics;
    # implementations add to it in next_logits.
    tokens_evaluated: int = 0

    @abstractmethod
    def next_logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits (float32, shape `(n_vocab,)`) for the token that follows `ids`."""

    def logits_at(self, ids: Sequence[int], positions: Sequence[int]) -> list[np.ndarray]:
        """Logits at several positions of `ids` (the logits at position `i` predict the token
        after `ids[: i + 1]`), ideally from one evaluation of all the new tokens.

        Engines that can read several positions of one batch override this; the default
        evaluates each prefix in turn (one engine call per position, same values).
        """
        return [self.next_logits(list(ids)[: p + 1]) for p in check_positions(ids, positions)]

    def close(self) -> None:
        """Release the engine's memory (optional)."""


class SerialEngine(Engine):
    """A `Backend` as an `Engine`: entered by one call at a time (llama.cpp crashed with SIGSEGV
    when two threads evaluated in one context unguarded), the interrupt checked before each
    engine call (an engine step cannot be stopped inside)."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.n_ctx, self.n_vocab = backend.n_ctx, backend.n_vocab
        self.multi_position = type(backend).logits_at is not Backend.logits_at
        self._lock = threading.Lock()

    @property
    def tokens_evaluated(self) -> int:
        return self.backend.tokens_evaluated

    @tokens_evaluated.setter
    def tokens_evaluated(self, value: int) -> None:
        self.backend.tokens_evaluated = value

    def logits_at(
        self, ids: Sequence[int], positions: Sequence[int], interrupt: Interrupt | None = None
    ) -> list[np.ndarray]:
        with self._lock:
            if interrupt is not None:
                interrupt.check()
            return self.backend.logits_at(ids, positions)

    def next_logits(self, ids: Sequence[int], interrupt: Interrupt | None = None) -> np.ndarray:
        with self._lock:
            if interrupt is not None:
                interrupt.check()
            return self.backend.next_logits(ids)

    def close(self) -> None:
        self.backend.close()


def as_engine(backend: Engine | Backend) -> Engine:
    """The Engine of an engine (itself) or of a serial Backend (`SerialEngine`)."""
    if isinstance(backend, Engine):
        return backend
    if isinstance(backend, Backend):
        return SerialEngine(backend)
    raise TypeError(f"expected a wildguard_lite Engine or Backend, got {type(backend).__name__}")


def check_positions(ids: Sequence[int], positions: Sequence[int]) -> list[int]:
    """Positions for `logits_at`: integers inside `ids`, in increasing order."""
    out = [int(p) for p in positions]
    if not out:
        raise ValueError("logits_at needs at least one position")
    if any(p < 0 or p >= len(ids) for p in out) or out != sorted(out):
        raise ValueError(f"positions must increase within 0..{len(ids) - 1}, got {out}")
    return out
