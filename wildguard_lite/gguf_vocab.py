"""The reference tokenizer rebuilt from a GGUF's standard `tokenizer.ggml.*` vocabulary.

A WildGuard GGUF made by llama.cpp's own converter (convert_hf_to_gguf.py) carries no
`wildguard_lite.tokenizer.*` keys, but it does carry the SentencePiece vocabulary: every piece
with its score and type, and the BOS/EOS/UNK ids. That is all a SentencePiece BPE model needs to
encode, so the slow reference tokenizer is rebuilt from it (serialised by hand: no protobuf
dependency). Two things are not in the file and are supplied here: the normaliser of Llama-family
SentencePiece models (identity, dummy prefix, no whitespace folding; llama.cpp's own "llama"
tokenizer assumes the same) and transformers' `legacy` flag (an option; default below).
"""

from __future__ import annotations

import struct

from .errors import ModelFileError
from .tokenization import AddedToken, TokenizerSpec

# transformers' LlamaTokenizer reads a missing `legacy` as True, and no public copy of WildGuard's
# tokenizer_config.json settled its value (docs/decisions.md, "legacy for third-party GGUFs").
LEGACY_DEFAULT = True
# Mistral's tokenizer_config.json files carry "add_prefix_space": null, which LlamaTokenizer reads as
# false; it matters only when legacy is false.
ADD_PREFIX_SPACE = False
# WildGuard's template needs these as control tokens (Mistral v0.3 has them as ids 3 and 4).
TEMPLATE_CONTROL_TOKENS = ("[INST]", "[/INST]")
# GGUF token types == SentencePiece piece types: 1 normal, 2 unknown, 3 control, 4 user-defined,
# 5 unused, 6 byte.
CONTROL, BYTE, UNKNOWN = 3, 6, 2
KEY_TOKENS = "tokenizer.ggml.tokens"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, value) -> bytes:
    """One protobuf field: bytes/str (length-delimited), float (fixed32) or int/bool (varint)."""
    if isinstance(value, (bytes, str)):
        data = value.encode("utf-8") if isinstance(value, str) else value
        return _varint(number << 3 | 2) + _varint(len(data)) + data
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    return _varint(number << 3) + _varint(int(value))


def sentencepiece_model(
    tokens: list[str],
    scores: list[float],
    types: list[int],
    unk_id: int,
    bos_id: int,
    eos_id: int,
    add_dummy_prefix: bool = True,
) -> bytes:
    """A serialised SentencePiece BPE ModelProto (sentencepiece_model.proto field numbers)."""
    pieces = b"".join(
        _field(1, _field(1, piece) + _field(2, float(score)) + _field(3, kind))
        for piece, score, kind in zip(tokens, scores, types)
    )
    trainer = b"".join(
        [
            _field(3, 2),  # model_type: BPE
            _field(4, len(tokens)),  # vocab_size
            _field(26, True),  # allow_whitespace_only_pieces (runs of spaces stay one word)
            _field(35, BYTE in types),  # byte_fallback
            _field(40, unk_id),
            _field(41, bos_id),
            _field(42, eos_id),
            # bos_id()/eos_id() look the ids up by these piece names.
            _field(45, tokens[unk_id]),
            _field(46, tokens[bos_id]),
            _field(47, tokens[eos_id]),
        ]
    )
    normalizer = b"".join(
        [
            _field(1, "identity"),
            _field(3, add_dummy_prefix),
            _field(4, False),  # remove_extra_whitespaces
            _field(5, True),  # escape_whitespaces ("▁")
        ]
    )
    return pieces + _field(2, trainer) + _field(3, normalizer)


def _value(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def spec_from_gguf_vocab(reader, where: str, legacy: bool = LEGACY_DEFAULT) -> TokenizerSpec:
    """The reference TokenizerSpec from a GGUFReader's `tokenizer.ggml.*` keys; refuses a
    vocabulary that is not SentencePiece or lacks WildGuard's template control tokens."""
    model = _value(reader, "tokenizer.ggml.model")
    tokens = _value(reader, KEY_TOKENS)
    if model != "llama" or not tokens:
        raise ModelFileError(
            f"{where}: has neither wildguard-lite's embedded tokenizer nor a SentencePiece ('llama') vocabulary "
            f"(tokenizer.ggml.model={model!r}); convert the Hugging Face checkpoint with 'wildguard-lite convert'"
        )
    n = len(tokens)
    scores = _value(reader, "tokenizer.ggml.scores") or [0.0] * n
    types = _value(reader, "tokenizer.ggml.token_type") or [1] * n
    if len(scores) != n or len(types) != n:
        raise ModelFileError(f"{where}: tokenizer.ggml tokens, scores and token_type differ in length")
    ids = {}
    for name, default in (("unknown", None), ("bos", 1), ("eos", 2)):
        value = _value(reader, f"tokenizer.ggml.{name}_token_id", default)
        if name == "unknown" and value is None:
            value = next((i for i, t in enumerate(types) if t == UNKNOWN), None)
        if value is None or not 0 <= int(value) < n:
            raise ModelFileError(f"{where}: tokenizer.ggml.{name}_token_id is missing or out of range")
        ids[name] = int(value)
    by_piece = {t: i for i, t in enumerate(tokens)}
    for token in TEMPLATE_CONTROL_TOKENS:
        if token not in by_piece or types[by_piece[token]] != CONTROL:
            raise ModelFileError(
                f"{where}: the vocabulary has no control token {token!r}, which WildGuard's template needs "
                "(Mistral v0.3's vocabulary has it); this is not a WildGuard model, or it was converted without "
                "its tokenizer.model"
            )
    sp_model = sentencepiece_model(
        list(tokens),
        [float(s) for s in scores],
        [int(t) for t in types],
        ids["unknown"],
        ids["bos"],
        ids["eos"],
        bool(_value(reader, "tokenizer.ggml.add_space_prefix", True)),
    )
    return TokenizerSpec(
        sp_model=sp_model,
        legacy=legacy,
        add_bos=bool(_value(reader, "tokenizer.ggml.add_bos_token", True)),
        add_prefix_space=ADD_PREFIX_SPACE,
        unk_token=tokens[ids["unknown"]],
        # As transformers lists a SentencePiece model's control pieces among its added tokens.
        added_tokens=tuple(AddedToken(t, i) for i, (t, k) in enumerate(zip(tokens, types)) if k == CONTROL),
    )


def spec_from_gguf_file(path, legacy: bool | None = None) -> TokenizerSpec:
    """`spec_from_gguf_vocab` for a GGUF file already checked by gguf_meta.read_gguf_info."""
    from .errors import require

    gguf = require("gguf", "gguf")
    reader = gguf.GGUFReader(path)
    return spec_from_gguf_vocab(reader, str(path), LEGACY_DEFAULT if legacy is None else legacy)
