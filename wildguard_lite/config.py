"""RuntimeConfig: how a Classifier runs, checked once when it is made.

Every entry point takes one (`load`, batch jobs, Ray actors, `serve`'s settings hold one; the
CLI builds it from the shared runtime flags, `flags.runtime_config`), and each bound has one
check and one message here (`check_threads`, `check_slots`, `check_kv_tokens`), which the
engines reuse when made without `load`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from .defaults import (
    DEFAULT_MODE,
    DEFAULT_N_CTX,
    DEFAULT_OVER_CONTEXT,
    DEFAULT_KV_TYPE,
    DEFAULT_SLOTS,
    KV_TYPES,
    MAX_N_CTX,
    MAX_SLOTS,
    MAX_THREADS,
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


def check_threads(threads: int | None) -> None:
    """None (the default: the cores) or 1..MAX_THREADS (llama.cpp's own cap, GGML_MAX_N_THREADS:
    above it llama.cpp dies instead of refusing); refused before any engine starts."""
    if threads is not None:
        _check_int(
            "threads",
            threads,
            1,
            MAX_THREADS,
            f"use at most the number of CPU cores ({os.cpu_count()} here), or leave it unset",
        )


def check_slots(slots: int) -> None:
    _check_int("slots", slots, 1, MAX_SLOTS, "each slot holds one stream's KV cache (n_ctx tokens of memory)")


def check_kv_tokens(kv_tokens: int | None, n_ctx: int) -> None:
    """None (the default: defaults.default_kv_tokens) or n_ctx..MAX_N_CTX cells."""
    if kv_tokens is not None:
        _check_int("kv_tokens", kv_tokens, n_ctx, MAX_N_CTX, "at least n_ctx: one full context must fit")


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
        check_slots(self.slots)
        check_kv_tokens(self.kv_tokens, self.n_ctx)
        _check_int("max_new_tokens", self.max_new_tokens, 1, self.n_ctx, "the answer needs about 17")
        for name in ("flash_attn", "use_mmap", "repack", "one_pass"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(f"{name} must be True or False, got {getattr(self, name)!r}")


RUNTIME_FIELDS = tuple(f.name for f in dataclasses.fields(RuntimeConfig))


def make_config(config: RuntimeConfig | None = None, **options: Any) -> RuntimeConfig:
    """`config` (default: RuntimeConfig()) with `options` (RuntimeConfig's fields) replaced,
    checked once: what `load`, batch jobs and Ray actors do with their arguments."""
    if config is not None and not isinstance(config, RuntimeConfig):
        raise InvalidInputError(f"config must be a wildguard_lite.RuntimeConfig, got {type(config).__name__}")
    unknown = sorted(set(options) - set(RUNTIME_FIELDS))
    if unknown:
        raise InvalidInputError(
            f"unknown runtime option(s) {', '.join(unknown)}; RuntimeConfig's fields are {', '.join(RUNTIME_FIELDS)}"
        )
    base = config if config is not None else RuntimeConfig()
    return dataclasses.replace(base, **options) if options else base
