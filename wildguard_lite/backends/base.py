"""The one method every engine implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Backend(ABC):
    """A causal LM that returns next-token logits for a token sequence.

    Implementations keep the KV state of the last sequence and re-evaluate only the part of
    `ids` after the longest common prefix, so the constant instruction prefix, the cues of
    score mode and the steps of generation are each evaluated once.
    """

    n_ctx: int
    n_vocab: int
    # True when next_logits/logits_at may be called from several threads at once and take an
    # `interrupt=` keyword (the llama.cpp backend); otherwise the Classifier serialises calls
    # and checks interrupts between them.
    concurrent: bool = False
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


def check_positions(ids: Sequence[int], positions: Sequence[int]) -> list[int]:
    """Positions for `logits_at`: integers inside `ids`, in increasing order."""
    out = [int(p) for p in positions]
    if not out:
        raise ValueError("logits_at needs at least one position")
    if any(p < 0 or p >= len(ids) for p in out) or out != sorted(out):
        raise ValueError(f"positions must increase within 0..{len(ids) - 1}, got {out}")
    return out
