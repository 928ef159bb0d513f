"""load(path | "hf://..."): check the file, rebuild its tokenizer, open the engine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import RuntimeConfig, make_config
from .errors import InvalidInputError, ModelFileError
from .runtime import Classifier
from .tokenization import WildGuardTokenizer


def load(
    path: str | os.PathLike,
    config: RuntimeConfig | None = None,
    *,
    prefix_cache: Any = None,
    quant: str | None = None,
    revision: str | None = None,
    legacy: bool | None = None,
    **options: Any,
) -> Classifier:
    """Load a converted WildGuard model.

    Args:
        path (`str` or `os.PathLike`): a `.gguf` file made by `wildguard-lite convert`, or an
            ONNX variant it made (`model.onnx`, or the folder holding it with the tokenizer files).
        config (`RuntimeConfig`, *optional*): how to run (mode, threads, n_ctx, slots, ...);
            default `RuntimeConfig()`.
        prefix_cache (`PrefixStateCache`, *optional*): a KV-state cache shared by several
            classifiers (llama.cpp only: the ONNX backend keeps its last sequence only).
        quant (`str`, *optional*): with "hf://owner/name[@revision]": the artifact to pull
            (default "q4_k_m"); it is downloaded through the Hugging Face cache and its sha256
            checked against the repo's manifest before use (wildguard_lite/hub.py).
        revision (`str`, *optional*): with "hf://": branch, tag or commit.
        legacy (`bool`, *optional*): only for a GGUF made by llama.cpp's converter (no embedded
            tokenizer): the slow tokenizer's `legacy` flag (default: gguf_vocab.LEGACY_DEFAULT).
        **options: `RuntimeConfig` fields, replacing `config`'s (`mode="generate"`, `threads=4`,
            `n_ctx`, `thresholds`, `over_context`, `slots`, `kv_tokens`, `max_new_tokens`,
            `flash_attn`, `use_mmap`, `repack`, `one_pass`).

    Returns:
        `Classifier`
    """
    config = make_config(config, **options)
    if str(path).startswith("hf://"):
        from .hub import DEFAULT_PULL_QUANT, pull

        path = pull(str(path), quant or DEFAULT_PULL_QUANT, revision)
    elif quant is not None or revision is not None:
        raise InvalidInputError("quant= and revision= apply to hf://owner/name only; pass the local file itself")
    return open_model(Path(path), config, prefix_cache, legacy)


def open_model(path: Path, config: RuntimeConfig, prefix_cache: Any = None, legacy: bool | None = None) -> Classifier:
    """A local model file (or ONNX folder) opened with `config`: the one place every entry
    point's `RuntimeConfig` reaches an engine."""
    path = Path(path)
    if path.suffix == ".onnx" or (path.is_dir() and (path / "model.onnx").is_file()):
        return _load_onnx(path, config)
    tokenizer = model_tokenizer(path, config, legacy)
    from .backends.llama import LlamaCppBackend

    backend = LlamaCppBackend(
        path,
        n_ctx=config.n_ctx,
        threads=config.threads,
        flash_attn=config.flash_attn,
        use_mmap=config.use_mmap,
        repack=config.repack,
        slots=config.slots,
        kv_tokens=config.kv_tokens,
        kv_type=config.kv_type,
        prefix_cache=prefix_cache,
    )
    if backend.n_vocab != tokenizer.vocab_size:
        backend.close()
        raise ModelFileError(
            f"{path}: model vocabulary ({backend.n_vocab}) does not match its tokenizer ({tokenizer.vocab_size})"
        )
    return Classifier(backend, tokenizer, config)


def model_tokenizer(path: Path, config: RuntimeConfig, legacy: bool | None = None) -> WildGuardTokenizer:
    """A GGUF's tokenizer, read without opening the engine (n_ctx checked against the file's
    trained context): `open_model` uses it, and so does a fleet's front, which plans without a
    model (server/fleet.py). An ONNX variant's is read from the folder beside its model."""
    if path.suffix == ".onnx" or (path.is_dir() and (path / "model.onnx").is_file()):
        from .backends.onnx import resolve_model_path
        from .tokenization import TokenizerSpec

        model = resolve_model_path(path)
        check_n_ctx(
            config.n_ctx, trained_context(model.parent), f"{model.parent / 'config.json'}: max_position_embeddings"
        )
        return _tokenizer(TokenizerSpec.from_hf_folder(model.parent), model.parent)
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder; pass the .gguf file inside it (see its manifest.json)")
    from .gguf_meta import read_gguf_info

    info = read_gguf_info(path)
    spec = info.tokenizer
    if spec is None:
        # A GGUF from llama.cpp's converter: rebuild the reference from its tokenizer.ggml.* vocabulary.
        from .gguf_vocab import spec_from_gguf_file

        spec = spec_from_gguf_file(path, legacy)
    elif legacy is not None and legacy != spec.legacy:
        raise InvalidInputError(
            f"{path}: carries its checkpoint's tokenizer (legacy={spec.legacy}); "
            "legacy= applies only to GGUFs without it"
        )
    check_n_ctx(config.n_ctx, info.context_length, f"{path}: llama.context_length")
    return _tokenizer(spec, path)


def _tokenizer(spec, where: Path) -> WildGuardTokenizer:
    try:
        return WildGuardTokenizer(spec)
    except ModelFileError as exc:
        raise ModelFileError(f"{where}: {exc}") from None


def check_n_ctx(n_ctx: int, trained: int | None, where: str) -> None:
    """n_ctx beyond the context the model was trained for gives garbage silently: refuse it."""
    if trained is not None and n_ctx > trained:
        raise InvalidInputError(
            f"n_ctx {n_ctx} exceeds the model's trained context of {trained} ({where}); use n_ctx <= {trained}"
        )


def trained_context(folder: Path) -> int | None:
    """max_position_embeddings from an ONNX variant's config.json, if it says."""
    import json

    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"{config}: not a valid config.json ({exc})") from None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelFileError(f"{config}: max_position_embeddings must be a positive integer, got {value!r}")
    return value


def _load_onnx(path: Path, config: RuntimeConfig) -> Classifier:
    """An ONNX variant: the model file (or its folder) with tokenizer.model + tokenizer_config.json
    beside it; onnxruntime, sentencepiece and numpy only."""
    from .backends.onnx import OnnxBackend, resolve_model_path
    from .tokenization import TokenizerSpec

    model = resolve_model_path(path)
    check_n_ctx(config.n_ctx, trained_context(model.parent), f"{model.parent / 'config.json'}: max_position_embeddings")
    tokenizer = _tokenizer(TokenizerSpec.from_hf_folder(model.parent), model.parent)
    backend = OnnxBackend(model, n_ctx=config.n_ctx, threads=config.threads)
    if backend.n_vocab != tokenizer.vocab_size:
        backend.close()
        raise ModelFileError(
            f"{model}: model vocabulary ({backend.n_vocab}) does not match its tokenizer ({tokenizer.vocab_size})"
        )
    return Classifier(backend, tokenizer, config)
