"""Defaults and limits that several modules share, each declared once here.

The CLI flags, `RuntimeConfig`, `ServeSettings`, the backends, batch jobs and benchmarks read
these names; change a default here and every entry point follows.
"""

from __future__ import annotations

import os

MODES = ("score", "generate")  # score: read the answers' probabilities; generate: greedy + parser
DEFAULT_MODE = "score"

# Input longer than the context: "split" judges it in overlapping windows (docs/long-inputs.md),
# "error" refuses it (InputTooLongError; 413 from serve). Split by default: a refusal is a status
# that fail-open clients pass through, so a padded harmful prompt would pass.
OVER_CONTEXT_MODES = ("split", "error")
DEFAULT_OVER_CONTEXT = "split"
# Tokens neighbouring windows share: a sentence up to this long lies whole inside one window
# (about 90 English words); 3 % of a 4096-token window.
WINDOW_OVERLAP_TOKENS = 128

DEFAULT_N_CTX = 4096  # fits WildGuard's inputs with room for the answer
MIN_N_CTX = 64  # the template alone is ~80 tokens with WildGuard's vocabulary
# llama.cpp stores n_ctx as uint32 and wraps larger values silently (2**32+300 became 512);
# the model's own trained context is checked at load and is always far below this.
MAX_N_CTX = 2**31 - 1

# Sequences one llama.cpp context holds at once (streams, concurrent calls; each keeps its own
# KV cache, so a stream's next check evaluates only its new tokens). They share one KV pool of
# default_kv_tokens() cells. A cell holds K and V of one token in every layer:
# 2 x layers x kv_heads x head_dim x bytes per value, at WildGuard's 7B shape (32 layers, 8 KV
# heads of 128) 128 KiB in f16 and 68 KiB in q8_0 (docs/laptop.md).
# The library's defaults are sized for one app on a desktop: 2 slots (a stream and a call)
# sharing one context of cells, 0.5 GiB at 7B with n_ctx 4096 (f16).
DEFAULT_SLOTS = 2
DEFAULT_KV_CONTEXTS = 1
# `serve`'s own: 8 slots sharing two contexts of cells (1 GiB at 7B, n_ctx 4096, f16).
SERVE_SLOTS = 8
SERVE_KV_CONTEXTS = 2
MAX_SLOTS = 64


def default_kv_tokens(n_ctx: int, slots: int, contexts: int | None = None) -> int:
    """KV cells shared by the slots: room for min(slots, contexts) full contexts (slots beyond
    it share the cells: streams are rarely a full context long). `contexts` by default: one for
    an app's few slots (up to DEFAULT_SLOTS), serve's two for more."""
    if contexts is None:
        contexts = DEFAULT_KV_CONTEXTS if slots <= DEFAULT_SLOTS else SERVE_KV_CONTEXTS
    return n_ctx * max(1, min(slots, contexts))


# The KV cache's value type: f16, or q8_0 (34 bytes per 32 values: 0.53x the memory; llama.cpp
# needs flash attention for a quantized V cache).
KV_TYPES = ("f16", "q8_0")
DEFAULT_KV_TYPE = "f16"
KV_TYPE_BYTES = {"f16": 2.0, "q8_0": 34 / 32}


def kv_cell_bytes(layers: int, kv_heads: int, head_dim: int, kv_type: str = DEFAULT_KV_TYPE) -> int:
    """Bytes one KV cell (one token's K and V in every layer) takes."""
    return int(2 * layers * kv_heads * head_dim * KV_TYPE_BYTES[kv_type])


# llama.cpp's GGML_MAX_N_THREADS: 50000 threads aborted the process with std::bad_alloc.
MAX_THREADS = 512
# More threads than this gained nothing on memory-bound prefill of a 7B model on the CPUs measured.
DEFAULT_MAX_THREADS = 8


# How llama.cpp's OpenMP threads wait for each other (libgomp's OMP_WAIT_POLICY, read when it
# loads): PASSIVE sleeps instead of spinning, so a guard sharing its CPU with an app or an LLM
# does not stall (docs/embedding.md has the measurements). Set OMP_WAIT_POLICY=ACTIVE yourself
# on a dedicated, idle machine.
DEFAULT_OMP_WAIT_POLICY = "PASSIVE"


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def default_threads(share: int = 1) -> int:
    """Engine threads when none are given: the available cores split `share` ways, at most
    DEFAULT_MAX_THREADS each, at least 1."""
    return max(1, min(available_cores() // max(1, share), DEFAULT_MAX_THREADS))


# --nice (classify, serve): the process at a lower CPU priority, as nice(1), so the machine's
# other work goes first when both want the cores (docs/cpu.md); 0 is normal priority.
DEFAULT_NICE = 0
MAX_NICE = 19


def lower_priority(nice: int) -> None:
    """Lower this process's CPU priority by `nice` (0-19). Call it before the engine starts its
    threads: they inherit the priority of the thread that creates them."""
    from .errors import InvalidInputError

    if isinstance(nice, bool) or not isinstance(nice, int) or not 0 <= nice <= MAX_NICE:
        raise InvalidInputError(
            f"--nice must be an integer from 0 (normal priority) to {MAX_NICE} (lowest), got {nice!r}"
        )
    if nice:
        try:
            os.nice(nice)
        except (AttributeError, OSError) as exc:  # not on this OS
            raise InvalidInputError(f"--nice {nice}: cannot lower the priority here ({exc})") from None
