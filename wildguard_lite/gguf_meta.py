"""wildguard-lite's own GGUF metadata: the reference tokenizer travels inside the file.

llama.cpp's tokenizer disagrees with the slow SentencePiece tokenizer around `[INST]`
(docs/decisions.md, "Tokenization"), so the runtime never uses it: it tokenizes with the embedded
SentencePiece model and feeds ids.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelFileError, require
from .tokenization import TokenizerSpec

KEY_TEMPLATE_VERSION = "wildguard_lite.template_version"
KEY_SP_MODEL = "wildguard_lite.tokenizer.sentencepiece_b64"
KEY_TOKENIZER_CONFIG = "wildguard_lite.tokenizer.config"
KEY_SOURCE = "wildguard_lite.source"
SUPPORTED_ARCHS = ("llama",)
GGUF_MAGIC = b"GGUF"
# llama.cpp's LLAMA_MAX_LAYERS (src/llama-hparams.h): block_count 0 or above it aborted the
# process (SIGABRT) inside llama.cpp instead of failing the load.
LLAMA_MAX_LAYERS = 512


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    architecture: str
    template_version: str | None
    tokenizer: TokenizerSpec | None
    context_length: int | None
    kv_bytes_per_token: int = 0  # an f16 K and V cache over every layer: what one cell costs


def _field_str(reader, key: str) -> str | None:
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.contents()
    return value if isinstance(value, str) else None


def read_gguf_info(path: str | os.PathLike) -> GGUFInfo:
    """Check a GGUF file (present, complete, Llama architecture) and read our metadata."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file; make one with 'wildguard-lite convert'")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelFileError(
            f"{path}: not a GGUF file (bad magic {magic!r}); pass a .gguf made by 'wildguard-lite convert'"
        )
    gguf = require("gguf", "gguf")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # truncated headers surface as ValueError/IndexError/struct errors
        raise ModelFileError(
            f"{path}: corrupt or truncated GGUF ({type(exc).__name__}: {exc}); convert it again"
        ) from None
    size = path.stat().st_size
    end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise ModelFileError(f"{path}: truncated GGUF ({size} bytes, tensors need {end}); convert or download it again")
    arch = _field_str(reader, "general.architecture") or "?"
    if arch not in SUPPORTED_ARCHS:
        raise ModelFileError(f"{path}: architecture '{arch}' is not WildGuard's (Mistral, stored as 'llama' in GGUF)")
    spec = None
    sp_b64 = _field_str(reader, KEY_SP_MODEL)
    tok_config = _field_str(reader, KEY_TOKENIZER_CONFIG)
    if sp_b64 and tok_config:
        try:
            spec = TokenizerSpec.from_config_json(base64.b64decode(sp_b64), tok_config)
        except (ValueError, KeyError, TypeError, ModelFileError) as exc:
            raise ModelFileError(f"{path}: embedded tokenizer metadata is corrupt ({exc})") from None
    hparams = check_hyperparameters(path, reader, arch)
    return GGUFInfo(
        path=path,
        architecture=arch,
        template_version=_field_str(reader, KEY_TEMPLATE_VERSION),
        tokenizer=spec,
        context_length=hparams["context_length"],
        kv_bytes_per_token=hparams["kv_bytes_per_token"],
    )


def _value(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        return None
    try:
        return field.contents()
    except Exception:  # a field whose declared type does not match its bytes
        return object()


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_hyperparameters(path: Path, reader, arch: str) -> dict:
    """Check every hyperparameter llama.cpp asserts on, or divides by, before it sees the file.

    Out-of-range values (block_count 0 or above LLAMA_MAX_LAYERS, an expert count on a dense
    model) abort the whole process inside llama.cpp, and a zero rope base or norm epsilon loads
    and yields garbage verdicts: refuse each with its key and the valid range.
    """
    fix = (
        "the file's metadata is damaged or not WildGuard's; convert the checkpoint again with 'wildguard-lite convert'"
    )

    def bad(key: str, value, rule: str):
        shown = "missing" if value is None else repr(value)[:80]
        return ModelFileError(f"{path}: GGUF key '{key}' is {shown}; it must be {rule}; {fix}")

    def integer(name: str, low: int, high: int, required: bool = True, per_layer: bool = False):
        key = f"{arch}.{name}"
        value = _value(reader, key)
        if value is None and not required:
            return None
        values = value if per_layer and isinstance(value, list) else [value]
        if per_layer and isinstance(value, list) and len(value) != n_layer:
            raise bad(key, value, f"one integer or a list of {n_layer} (one per layer)")
        if not values or not all(_is_int(v) and low <= v <= high for v in values):
            rule = f"exactly {low}" if low == high else f"an integer from {low} to {high}"
            raise bad(key, value, rule + (" (or one per layer)" if per_layer else ""))
        return values if per_layer else value

    def positive_float(name: str, high: float, required: bool):
        key = f"{arch}.{name}"
        value = _value(reader, key)
        if value is None and not required:
            return
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < high:
            raise bad(key, value, "a finite number above 0" + (f" and below {high:g}" if high < float("inf") else ""))

    big = 2**31 - 1
    n_layer = integer("block_count", 1, LLAMA_MAX_LAYERS)
    context_length = integer("context_length", 1, big)
    n_embd = integer("embedding_length", 1, big)
    integer("feed_forward_length", 1, big, per_layer=True)
    heads = integer("attention.head_count", 1, big, per_layer=True)
    kv_heads = integer("attention.head_count_kv", 1, big, required=False, per_layer=True) or heads
    if len(kv_heads) == 1 and len(heads) > 1:
        kv_heads = kv_heads * len(heads)
    if len(heads) == 1 and len(kv_heads) > 1:
        heads = heads * len(kv_heads)
    if any(h % kv for h, kv in zip(heads, kv_heads)):
        raise bad(
            f"{arch}.attention.head_count_kv",
            _value(reader, f"{arch}.attention.head_count_kv"),
            f"a divisor of attention.head_count ({_value(reader, f'{arch}.attention.head_count')})",
        )
    head_dim = {}
    for name in ("key_length", "value_length"):
        head_dim[name] = integer(f"attention.{name}", 1, big, required=False)
        if head_dim[name] is None:
            if n_embd % heads[0]:
                raise bad(
                    f"{arch}.attention.head_count",
                    heads[0],
                    f"a divisor of embedding_length ({n_embd}), or attention.{name} must be given",
                )
            head_dim[name] = n_embd // heads[0]
    n_rot = integer("rope.dimension_count", 1, big, required=False)
    if n_rot is not None and n_rot != head_dim["key_length"]:
        raise bad(f"{arch}.rope.dimension_count", n_rot, f"the head size {head_dim['key_length']} (llama architecture)")
    positive_float("rope.freq_base", float("inf"), required=False)
    positive_float("attention.layer_norm_rms_epsilon", 1.0, required=True)
    for name in ("expert_count", "expert_used_count"):
        integer(name, 0, 0, required=False)  # WildGuard is dense; experts abort llama.cpp here
    tokens = _value(reader, "tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise bad(
            "tokenizer.ggml.tokens",
            None if tokens is None else f"{type(tokens).__name__}",
            "a non-empty list of tokens",
        )
    integer("vocab_size", len(tokens), len(tokens), required=False)
    layers = kv_heads if len(kv_heads) == n_layer else kv_heads[:1] * n_layer
    kv_bytes = sum(2 * h * (head_dim["key_length"] + head_dim["value_length"]) for h in layers)
    return {"context_length": context_length, "block_count": n_layer, "kv_bytes_per_token": kv_bytes}
