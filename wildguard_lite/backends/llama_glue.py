"""The llama-cpp-python glue of the llama.cpp engine: constructor parameters Llama() takes no
argument for, logging, the GIL-free abort callback and its outcome.
backends/llama.py runs rounds with them; backends/slots.py decides where requests run."""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading

from ..errors import ClassificationCancelled, ClassificationTimeout
from .base import Interrupt

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
