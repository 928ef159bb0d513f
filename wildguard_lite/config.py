"""RuntimeConfig: how a Classifier runs, checked once when it is made."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .backends.base import check_threads
from .defaults import (
    DEFAULT_MODE,
    DEFAULT_N_CTX,
    DEFAULT_OVER_CONTEXT,
    DEFAULT_KV_TYPE,
    DEFAULT_SLOTS,
    KV_TYPES,
    MAX_N_CTX,
    MAX_SLOTS,
    MIN_N_CTX,
    MODES,
    OVER_CONTEXT_MODES,
)
from .errors import InvalidInputError
from .thresholds import validate_thresholds


def _check_int(name: str, value: Any, low: int, high: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise InvalidInputError(f"{name} must be between {low} and {high}, got {value}; {hint}")


@dataclass(frozen=True)
class RuntimeConfig:
    """How to run: `mode` is "score" (read the three answers' probabilities) or "generate"
    (greedy generation parsed like the official package)."""

    mode: str = DEFAULT_MODE
    threads: int | None = None
    n_ctx: int = DEFAULT_N_CTX
    max_new_tokens: int = 32
    flash_attn: bool = True
    use_mmap: bool = True
    repack: bool = False
    # Per-label thresholds on P(yes) ({label: t}: "yes" when P(yes) >= t); None keeps
    # WildGuard's own argmax. Only the reported label moves: the model is always conditioned
    # on its own greedy answers.
    thresholds: Mapping[str, float] | None = field(default=None, hash=False)
    # Score mode: the three cues and guessed answers in one engine call (see score_ids).
    one_pass: bool = True
    # llama.cpp: sequences held at once (streams and concurrent calls each keep their KV cache
    # in one; n_ctx tokens of KV memory each). ONNX runs one sequence whatever this says.
    slots: int = DEFAULT_SLOTS
    # llama.cpp: KV cells the slots share (None: defaults.default_kv_tokens); at least n_ctx.
    kv_tokens: int | None = None
    # llama.cpp: the KV cache's value type, "f16" or "q8_0" (half the memory; needs flash_attn).
    kv_type: str = DEFAULT_KV_TYPE
    # Input longer than the context: "split" (judged in overlapping windows) or "error" (refused).
    over_context: str = DEFAULT_OVER_CONTEXT

    def __post_init__(self):
        object.__setattr__(self, "thresholds", validate_thresholds(self.thresholds))
        if self.mode not in MODES:
            raise InvalidInputError(f"unknown mode '{self.mode}'; choose one of {', '.join(MODES)}")
        if self.kv_type not in KV_TYPES:
            raise InvalidInputError(f"unknown kv_type '{self.kv_type}'; choose one of {', '.join(KV_TYPES)}")
        if self.kv_type != "f16" and not self.flash_attn:
            raise InvalidInputError(f"kv_type '{self.kv_type}' needs flash_attn=True (llama.cpp's quantized V cache)")
        if self.over_context not in OVER_CONTEXT_MODES:
            raise InvalidInputError(
                f"unknown over_context '{self.over_context}'; choose one of {', '.join(OVER_CONTEXT_MODES)}"
            )
        _check_int(
            "n_ctx",
            self.n_ctx,
            MIN_N_CTX,
            MAX_N_CTX,
            f"the default {DEFAULT_N_CTX} fits WildGuard's inputs; at most the model's trained context",
        )
        check_threads(self.threads)
        _check_int("slots", self.slots, 1, MAX_SLOTS, "each slot holds one stream's KV cache (n_ctx tokens of memory)")
        if self.kv_tokens is not None:
            _check_int("kv_tokens", self.kv_tokens, self.n_ctx, MAX_N_CTX, "at least n_ctx: one full context must fit")
        _check_int("max_new_tokens", self.max_new_tokens, 1, self.n_ctx, "the answer needs about 17")
