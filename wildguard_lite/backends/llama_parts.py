"""The llama.cpp engine's small parts: constructor defaults, slot bookkeeping, counters, the
GIL-free abort callback (backends/llama.py uses them)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from dataclasses import dataclass, field

import numpy as np

from ..errors import ClassificationCancelled, ClassificationTimeout
from .scheduler import Interrupt

_PARAMS_LOCK = threading.Lock()


@contextlib.contextmanager
def llama_default_params(model: dict, context: dict):
    """Llama() takes no argument for some params (use_extra_bufts, n_seq_max, kv_unified): set
    them on the defaults it starts from, for the duration of one constructor call."""
    import llama_cpp.llama as module

    with _PARAMS_LOCK:
        originals = (module.llama_cpp.llama_model_default_params, module.llama_cpp.llama_context_default_params)

        def patch(original, fields):
            def patched():
                params = original()
                for name, value in fields.items():
                    setattr(params, name, value)
                return params

            return patched

        module.llama_cpp.llama_model_default_params = patch(originals[0], model)
        module.llama_cpp.llama_context_default_params = patch(originals[1], context)
        try:
            yield
        finally:
            module.llama_cpp.llama_model_default_params, module.llama_cpp.llama_context_default_params = originals


def quiet_logging() -> None:
    """Back to errors-only logging after a verbose load."""
    from llama_cpp._logger import set_verbose

    set_verbose(False)


@dataclass
class SlotSequence:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # what the KV cache holds for this sequence
    stem: int = 0  # the first position the last request read logits at
    last_used: int = 0


@dataclass
class EngineStats:
    """Public counters (benchmarks, /metrics)."""

    decode_calls: int = 0  # llama_decode calls
    rounds: int = 0  # batched rounds (one per group of coinciding requests)
    requests: int = 0
    aborted: int = 0  # rounds stopped inside the engine by cancellation or a deadline
    evictions: int = 0  # idle sequences dropped to make room in the KV pool
    prefix_copies: int = 0  # prefixes shared from another sequence instead of evaluated


def strlen_abort_callback(llama_cpp):
    """The C library's strlen as a ggml_abort_callback, or None where it cannot be found."""
    try:
        libc = ctypes.CDLL(None) if os.name != "nt" else ctypes.cdll.msvcrt
        return llama_cpp.ggml_abort_callback(ctypes.cast(libc.strlen, ctypes.c_void_p).value)
    except (OSError, AttributeError):
        return None


class Aborted(Exception):
    """llama_decode returned 2: the abort callback stopped it."""


def interrupt_error(interrupt: Interrupt | None) -> BaseException:
    try:
        if interrupt is not None:
            interrupt.check()
    except (ClassificationCancelled, ClassificationTimeout) as exc:
        return exc
    return ClassificationCancelled("the call was stopped with the others of its round")


def common_prefix(tokens: list[int], query: np.ndarray) -> int:
    n = min(len(tokens), len(query))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(tokens[:n], dtype=np.int64) != query[:n])
    return int(diff[0]) if diff.size else n
