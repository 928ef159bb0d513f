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


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    architecture: str
    template_version: str | None
    tokenizer: TokenizerSpec | None
    context_length: int | None


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
        raise ModelFileError(f"{path}: not a GGUF file (bad magic {magic!r}); pass a .gguf made by 'wildguard-lite convert'")
    gguf = require("gguf", "gguf")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # truncated headers surface as ValueError/IndexError/struct errors
        raise ModelFileError(f"{path}: corrupt or truncated GGUF ({type(exc).__name__}: {exc}); convert it again") from None
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
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelFileError(f"{path}: embedded tokenizer metadata is corrupt ({exc})") from None
    ctx_field = reader.fields.get(f"{arch}.context_length")
    return GGUFInfo(
        path=path,
        architecture=arch,
        template_version=_field_str(reader, KEY_TEMPLATE_VERSION),
        tokenizer=spec,
        context_length=int(ctx_field.contents()) if ctx_field is not None else None,
    )
