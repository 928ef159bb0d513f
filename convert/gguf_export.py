"""Hugging Face Mistral/Llama checkpoint -> full-precision GGUF, one tensor at a time."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Callable

import numpy as np

from wildguard_lite.contract import TEMPLATE_VERSION
from wildguard_lite.errors import ModelFileError, require
from wildguard_lite.gguf_meta import KEY_SOURCE, KEY_SP_MODEL, KEY_TEMPLATE_VERSION, KEY_TOKENIZER_CONFIG
from wildguard_lite.tokenization import TokenizerSpec
from wildguard_lite.convert.pickle_io import checkpoint_tensors
from wildguard_lite.convert.safetensors_io import TensorRef

SUPPORTED = {"MistralForCausalLM": "mistral", "LlamaForCausalLM": "llama"}
FLOAT_TYPES = ("f32", "bf16", "f16")


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{folder}: no config.json; is this a Hugging Face checkpoint folder?") from None
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: not valid JSON ({exc})") from None
    archs = config.get("architectures") or []
    if not any(a in SUPPORTED for a in archs):
        raise ModelFileError(
            f"{path}: architecture {archs or config.get('model_type')} is not supported; "
            "this converter handles Mistral/Llama checkpoints such as allenai/wildguard"
        )
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ModelFileError(f"{path}: '{key}' must be a positive integer, got {value!r}")
    for key in ("num_key_value_heads", "head_dim"):
        value = config.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ModelFileError(f"{path}: '{key}' must be a positive integer or absent, got {value!r}")
    n_head, n_kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    if n_head % n_kv:
        raise ModelFileError(f"{path}: num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_kv}")
    if head_dim(config) % 2:
        raise ModelFileError(f"{path}: the head size {head_dim(config)} must be even for rotary embeddings")
    if config.get("rope_scaling"):
        raise ModelFileError(f"{path}: rope_scaling is not supported by this converter")
    return config


def head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def tied_embeddings(config: dict) -> bool:
    # transformers' default for Mistral/Llama configs is untied.
    return bool(config.get("tie_word_embeddings", False))


def expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor a Mistral/Llama checkpoint with this config holds, with its shape
    (lm_head.weight only when the embeddings are not tied)."""
    hidden, ffn, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    q, kv = n_head * head_dim(config), n_kv * head_dim(config)
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not tied_embeddings(config):
        shapes["lm_head.weight"] = (vocab, hidden)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        layer = {
            "input_layernorm.weight": (hidden,),
            "post_attention_layernorm.weight": (hidden,),
            "self_attn.q_proj.weight": (q, hidden),
            "self_attn.k_proj.weight": (kv, hidden),
            "self_attn.v_proj.weight": (kv, hidden),
            "self_attn.o_proj.weight": (hidden, q),
            "mlp.gate_proj.weight": (ffn, hidden),
            "mlp.up_proj.weight": (ffn, hidden),
            "mlp.down_proj.weight": (hidden, ffn),
        }
        if config.get("attention_bias"):  # Llama variants; Mistral has none
            layer.update(
                {
                    "self_attn.q_proj.bias": (q,),
                    "self_attn.k_proj.bias": (kv,),
                    "self_attn.v_proj.bias": (kv,),
                    "self_attn.o_proj.bias": (hidden,),
                }
            )
        if config.get("mlp_bias"):
            layer.update({"mlp.gate_proj.bias": (ffn,), "mlp.up_proj.bias": (ffn,), "mlp.down_proj.bias": (hidden,)})
        shapes.update({p + k: v for k, v in layer.items()})
    return shapes


def _names(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def validate_tensors(folder: Path, config: dict, refs) -> None:
    """Refuse a checkpoint whose tensors do not match its config.json: missing, extra or
    misshaped tensors would make a file llama.cpp cannot load, or one that loads and is wrong.
    `refs`: objects with `name` and `shape` (safetensors or any other reader)."""
    expected = expected_shapes(config)
    # Tied: transformers ignores a stored lm_head.weight and uses the embeddings, and so do we.
    present = {
        r.name: tuple(r.shape)
        for r in refs
        if not r.name.endswith("rotary_emb.inv_freq") and not (r.name == "lm_head.weight" and tied_embeddings(config))
    }
    n_layer = config["num_hidden_layers"]
    if "lm_head.weight" in expected and "lm_head.weight" not in present:
        raise ModelFileError(
            f"{folder}: no lm_head.weight, and config.json does not set tie_word_embeddings; the checkpoint "
            'is incomplete (copy all its safetensors shards), or set "tie_word_embeddings": true if its '
            "output layer is the embedding matrix"
        )
    missing = [n for n in expected if n not in present]
    if missing:
        raise ModelFileError(
            f"{folder}: {len(missing)} tensor(s) missing for the {n_layer} layers config.json "
            f"declares: {_names(missing)}; copy every safetensors shard of the checkpoint"
        )
    extra = [n for n in present if n not in expected]
    if extra:
        raise ModelFileError(
            f"{folder}: {len(extra)} tensor(s) that a Mistral/Llama model with {n_layer} layers "
            f"does not have: {_names(extra)}; config.json does not match the weights"
        )
    for name, shape in present.items():
        if shape != expected[name]:
            raise ModelFileError(
                f"{folder}: tensor '{name}' has shape {list(shape)} but config.json implies "
                f"{list(expected[name])}; config.json does not match the weights"
            )


def check_checkpoint(folder: Path) -> dict:
    """Everything a conversion can check before writing anything: config, tokenizer and tensor
    layout. Returns the config."""
    config = read_config(folder)
    try:
        spec = TokenizerSpec.from_hf_folder(folder)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelFileError(
            f"{folder / 'tokenizer_config.json'}: unexpected content ({exc!r}); "
            "use the checkpoint's original tokenizer_config.json"
        ) from None
    _load_sentencepiece(folder, spec, config["vocab_size"])
    validate_tensors(folder, config, checkpoint_tensors(folder))
    return config


def _rope_theta(config: dict) -> float:
    # transformers 5 may write only rope_parameters (docs/decisions.md).
    if "rope_theta" in config:
        return float(config["rope_theta"])
    params = config.get("rope_parameters") or {}
    return float(params.get("rope_theta", 10000.0))


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp expects q/k rows interleaved for its rotary layout (HF uses rotate_half).
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    bits = x.astype(np.float32, copy=False).view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def _all_finite(data: np.ndarray) -> bool:
    """No NaN/inf; uint16 arrays are bf16 bits (all exponent bits set means inf or NaN)."""
    if data.dtype == np.uint16:
        return not bool(((data & np.uint16(0x7F80)) == np.uint16(0x7F80)).any())
    return bool(np.isfinite(data).all())


def _load_sentencepiece(folder: Path, spec: TokenizerSpec, vocab_size: int):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(spec.sp_model)
    except Exception as exc:  # sentencepiece raises RuntimeError/OSError variants
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(
            f"{folder / 'tokenizer.model'}: not a SentencePiece model ({first}); "
            "copy the checkpoint's tokenizer.model again"
        ) from None
    n = sp.get_piece_size()
    if n != vocab_size:
        raise ModelFileError(
            f"{folder / 'tokenizer.model'}: {n} pieces but config.json says vocab_size "
            f"{vocab_size}; the tokenizer does not belong to these weights"
        )
    return sp


def _vocab(folder: Path, spec: TokenizerSpec, vocab_size: int):
    sp = _load_sentencepiece(folder, spec, vocab_size)
    n = sp.get_piece_size()
    pieces, scores, types = [], [], []
    for i in range(n):
        pieces.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        # GGUF token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_byte(i):
            types.append(6)
        elif sp.is_unused(i):
            types.append(5)
        else:
            types.append(1)
    return sp, pieces, scores, types


def write_gguf(
    folder: Path,
    out_path: Path,
    out_type: str = "f16",
    source_info: dict | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> None:
    """Write `out_path` (which should be a temp path; the caller renames) from a checkpoint folder."""
    gguf = require("gguf", "convert")
    if out_type not in FLOAT_TYPES:
        raise ValueError(out_type)
    config = check_checkpoint(folder)
    spec = TokenizerSpec.from_hf_folder(folder)
    sp, pieces, scores, types = _vocab(folder, spec, config["vocab_size"])
    refs = checkpoint_tensors(folder)  # safetensors preferred, else pickle via weights_only

    n_layer = config["num_hidden_layers"]
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    hidden = config["hidden_size"]
    n_rot = head_dim(config)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)

    plan: list[tuple[TensorRef, str]] = []
    for ref in refs:
        if ref.name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed by llama.cpp
        if ref.name == "lm_head.weight" and tied_embeddings(config):
            continue  # no output.weight: llama.cpp then uses token_embd, as transformers does
        new = name_map.get_name(ref.name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ModelFileError(f"{folder}: unexpected tensor '{ref.name}' for a Mistral/Llama model")
        plan.append((ref, new))

    ftype = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    }[out_type]
    writer = gguf.GGUFWriter(out_path, "llama")
    writer.add_name(config.get("_name_or_path") or folder.name)
    writer.add_context_length(int(config.get("max_position_embeddings", 32768)))
    writer.add_embedding_length(hidden)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(n_rot)
    if n_rot != hidden // n_head:
        writer.add_key_length(n_rot)
        writer.add_value_length(n_rot)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(sp.unk_id())
    writer.add_add_bos_token(spec.add_bos)
    writer.add_add_eos_token(False)
    # The reference tokenizer travels with the weights; no chat template is ever written.
    writer.add_string(KEY_TEMPLATE_VERSION, TEMPLATE_VERSION)
    writer.add_string(KEY_SP_MODEL, base64.b64encode(spec.sp_model).decode("ascii"))
    writer.add_string(KEY_TOKENIZER_CONFIG, spec.config_json())
    writer.add_string(KEY_SOURCE, json.dumps(source_info or {}, sort_keys=True))

    def stored(ref: TensorRef) -> tuple[np.dtype, int, object]:
        n = int(np.prod(ref.shape))
        if len(ref.shape) == 1 or out_type == "f32":
            return np.dtype(np.float32), 4 * n, None  # norms stay f32
        if out_type == "f16":
            return np.dtype(np.float16), 2 * n, None
        return np.dtype(np.uint16), 2 * n, gguf.GGMLQuantizationType.BF16

    for ref, new in plan:
        dtype, nbytes, raw = stored(ref)
        writer.add_tensor_info(new, ref.shape, dtype, nbytes, raw_dtype=raw)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for i, (ref, new) in enumerate(plan):
        dtype, _, raw = stored(ref)
        if ref.dtype == "BF16" and raw is not None:
            data = ref.load_raw()  # bf16 -> bf16: copy the bits, lossless
        else:
            data = ref.load_f32()
        if new.endswith("attn_q.weight"):
            data = _permute(data, n_head)
        elif new.endswith("attn_k.weight"):
            data = _permute(data, n_kv)
        if raw is not None and data.dtype != np.uint16:
            data = _f32_to_bf16_bits(data)
        elif raw is None:
            with np.errstate(over="ignore"):  # an f16 overflow is reported just below
                data = data.astype(dtype, copy=False)
        if not _all_finite(data):
            # Written NaN/inf makes every logit NaN: refuse, saying whether the source has them.
            if not _all_finite(ref.load_raw() if ref.dtype == "BF16" else ref.load_f32()):
                raise ModelFileError(
                    f"{ref.file}: tensor '{ref.name}' holds NaN or infinite values; "
                    "the checkpoint is corrupt (download or copy it again)"
                )
            raise ModelFileError(f"tensor '{ref.name}' overflows {out_type}; convert with --quant bf16 or f32 instead")
        writer.write_tensor_data(np.ascontiguousarray(data))
        del data
        if progress:
            progress(i + 1, len(plan), new)
    writer.close()
