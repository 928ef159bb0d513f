"""GGUF quantization through llama-cpp-python's llama_model_quantize (with an optional
importance matrix: convert/imatrix.py)."""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from typing import Mapping

import numpy as np

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
    "iq4_nl": "LLAMA_FTYPE_MOSTLY_IQ4_NL",
    "iq4_xs": "LLAMA_FTYPE_MOSTLY_IQ4_XS",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "iq3_m": "LLAMA_FTYPE_MOSTLY_IQ3_M",
    "iq3_xxs": "LLAMA_FTYPE_MOSTLY_IQ3_XXS",
    "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
    "iq2_m": "LLAMA_FTYPE_MOSTLY_IQ2_M",
}

# Types whose main tensors llama.cpp quantizes to IQ3_XXS, IQ2_* or IQ1_*: it refuses them
# without an importance matrix (llama-quant.cpp's tensor_requires_imatrix).
IMATRIX_REQUIRED = ("iq3_xxs", "iq2_m")

# Values per quantization block along a row (a weight's input dimension): 32 for the legacy
# types and IQ4_NL, 256 (QK_K) for the k-quants and the other i-quants. llama.cpp silently
# falls back to another type for a tensor whose rows do not divide; we refuse instead.
BLOCK = {q: 32 if q in ("q8_0", "q5_0", "q4_0", "iq4_nl") else 256 for q in QUANTS}


def row_lengths(config: Mapping) -> dict[str, int]:
    """The row length (input dimension) of each kind of quantized weight of a Mistral/Llama config."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    return {
        "token_embd, attn_q/k/v, ffn_gate/up, output": hidden,
        "attn_output": heads * head_dim,
        "ffn_down": int(config["intermediate_size"]),
    }


def check_quant(quant: str, config: Mapping, has_imatrix: bool) -> None:
    """Refuse a type this model's shapes cannot take, or one that needs an importance matrix
    when none is given, before any work starts."""
    if quant not in QUANTS:
        raise InvalidInputError(f"unknown GGUF quant '{quant}'; choose from f32, bf16, f16, {', '.join(QUANTS)}")
    if quant in IMATRIX_REQUIRED and not has_imatrix:
        raise InvalidInputError(
            f"--quant {quant} needs an importance matrix (llama.cpp refuses it without one); add --imatrix "
            "(calibration on the toy's exchanges) or --imatrix FILE.jsonl (your own exchanges)"
        )
    block = BLOCK[quant]
    bad = {what: n for what, n in row_lengths(config).items() if n % block}
    if bad:
        what, n = next(iter(bad.items()))
        fits = ", ".join(q for q in QUANTS if all(m % BLOCK[q] == 0 for m in row_lengths(config).values()))
        raise InvalidInputError(
            f"--quant {quant} packs rows in blocks of {block} values, but this model's {what} rows have {n}; "
            f"this checkpoint's shapes allow: {fits or 'none of the quantized types'} (or f16/bf16/f32)"
        )


def allowed_quants(config: Mapping, has_imatrix: bool = True) -> tuple[str, ...]:
    """The quantized types this model's shapes allow (with or without an importance matrix)."""
    out = []
    for q in QUANTS:
        try:
            check_quant(q, config, has_imatrix)
        except InvalidInputError:
            continue
        out.append(q)
    return tuple(out)


def _imatrix_array(llama_cpp, imatrix: Mapping[str, np.ndarray]):
    """A NULL-terminated array of llama_model_imatrix_data; the float buffers stay referenced
    by the returned tuple's second item for the duration of the call."""
    entry = llama_cpp.llama_model_imatrix_data
    array = (entry * (len(imatrix) + 1))()
    keep = []
    for i, (name, values) in enumerate(sorted(imatrix.items())):
        data = np.ascontiguousarray(values, dtype=np.float32)
        keep.append(data)
        array[i].name = name.encode()
        array[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        array[i].size = data.size
    array[len(imatrix)].name = None  # the terminator
    return array, keep


def quantize(
    src: Path,
    dst: Path,
    quant: str,
    threads: int | None = None,
    imatrix: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Quantize `src` (a full-precision GGUF) into `dst` (a temp path; the caller renames).
    `imatrix`: GGUF tensor name -> per-column mean of the squared inputs (convert/imatrix.py)."""
    if quant not in QUANTS:
        raise InvalidInputError(f"unknown GGUF quant '{quant}'; choose from f32, bf16, f16, {', '.join(QUANTS)}")
    if quant in IMATRIX_REQUIRED and not imatrix:
        raise InvalidInputError(f"--quant {quant} needs an importance matrix; add --imatrix")
    llama_cpp = require("llama_cpp", "gguf")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[quant])
    params.nthread = threads or default_threads()  # the --threads default of every command
    keep = None
    if imatrix:
        array, keep = _imatrix_array(llama_cpp, imatrix)
        params.imatrix = ctypes.cast(array, type(params.imatrix))
    from wildguard_lite.utils import capture_stderr

    # The C call runs in a worker thread: the main thread stays free to run signal handlers
    # (cleanup_on_signals), which would otherwise wait minutes for the call to return at 7B.
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["rc"] = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
        except Exception as exc:  # a ctypes error: reported below like a failed call
            result["error"] = exc

    # llama.cpp logs a line per tensor to stderr; the CLI shows its own progress instead, and
    # the log's tail says why a call failed.
    with capture_stderr() as log:
        worker = threading.Thread(target=work, name="llama-quantize", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
    del keep  # the buffers may go once the call has returned
    rc = result.get("rc", -1)
    if rc != 0:
        said = log.tail(2, 300)
        raise WildGuardLiteError(
            f"llama.cpp failed to quantize {src.name} to {quant} (code {rc})" + (f": {said}" if said else "")
        )
