"""GGUF quantization through llama-cpp-python's llama_model_quantize."""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

from wildguard_lite.defaults import default_threads
from wildguard_lite.errors import InvalidInputError, WildGuardLiteError, require

# Our quant name -> llama.cpp ftype constant name.
QUANTS = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
}


def quantize(src: Path, dst: Path, quant: str, threads: int | None = None) -> None:
    """Quantize `src` (a full-precision GGUF) into `dst` (a temp path; the caller renames)."""
    if quant not in QUANTS:
        raise InvalidInputError(f"unknown GGUF quant '{quant}'; choose from f32, bf16, f16, {', '.join(QUANTS)}")
    llama_cpp = require("llama_cpp", "gguf")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[quant])
    params.nthread = threads or default_threads()  # the --threads default of every command
    from wildguard_lite.utils import quiet_stderr

    # The C call runs in a worker thread: the main thread stays free to run signal handlers
    # (cleanup_on_signals), which would otherwise wait minutes for the call to return at 7B.
    result: dict[str, int] = {}

    def work() -> None:
        result["rc"] = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))

    # llama.cpp logs a line per tensor to stderr; the CLI shows its own progress instead.
    with quiet_stderr():
        worker = threading.Thread(target=work, name="llama-quantize", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
    rc = result.get("rc", -1)
    if rc != 0:
        raise WildGuardLiteError(f"llama.cpp failed to quantize {src.name} to {quant} (code {rc})")
