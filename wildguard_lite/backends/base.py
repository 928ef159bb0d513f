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
    # Tokens run through the model (not reused from the KV cache), for reports and metrics;
    # implementations add to it in next_logits.
    tokens_evaluated: int = 0

    @abstractmethod
    def next_logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits (float32, shape `(n_vocab,)`) for the token that follows `ids`."""

    def close(self) -> None:
        """Release the engine's memory (optional)."""
