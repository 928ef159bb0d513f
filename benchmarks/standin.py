"""A random-weight stand-in with WildGuard's exact shape, written tensor by tensor.

WildGuard's weights are not reachable here; for speed and memory at true size only the shape
matters. The checkpoint is a Hugging Face folder (bf16 safetensors, config, tokenizer) that
`wildguard-lite convert` takes like the real one. Peak memory stays near one tensor (~0.5 GB
for the embedding) although the file is ~14.5 GB. Its tokenizer is the toy's, trained in
seconds (no model), padded to WildGuard's vocabulary size.

    wildguard-lite bench standin --out standin/ && wildguard-lite convert standin/ --quant q8_0,q4_k_m --out standin-gguf/
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from wildguard_lite.utils import publishable

# allenai/wildguard's config.json (Mistral-7B-v0.3 fine-tune), (docs/decisions.md, "WildGuard's shape").
WILDGUARD_CONFIG = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 32768,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-05,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "torch_dtype": "bfloat16",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="the checkpoint folder to write (replaced if present)")
    p.add_argument(
        "--tokenizer", type=Path, help="folder with tokenizer.model (default: the toy's tokenizer, trained in seconds)"
    )
    p.add_argument("--layers", type=int, help="fewer layers (for a quick check); default 32 as WildGuard")


def run(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from wildguard_lite.toy import build_tokenizer

    overrides = {"num_hidden_layers": args.layers} if args.layers else None
    with tempfile.TemporaryDirectory(prefix="wildguard-standin-tokenizer-") as tmp:
        tokenizer = args.tokenizer or build_tokenizer(Path(tmp))
        with Progress(transient=True) as bar:
            task = bar.add_task("writing random bf16 tensors", total=None)
            build_standin(
                args.out, tokenizer, overrides, progress=lambda done, n: bar.update(task, completed=done, total=n)
            )
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {args.out} ({size / 2**30:.2f} GiB); convert it with: wildguard-lite convert {args.out} --out DIR")
    return 0


def tensor_shapes(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, inter, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    hd = config.get("head_dim") or h // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    shapes = [("model.embed_tokens.weight", (v, h))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        shapes += [
            (f"{p}.input_layernorm.weight", (h,)),
            (f"{p}.self_attn.q_proj.weight", (q, h)),
            (f"{p}.self_attn.k_proj.weight", (kv, h)),
            (f"{p}.self_attn.v_proj.weight", (kv, h)),
            (f"{p}.self_attn.o_proj.weight", (h, q)),
            (f"{p}.post_attention_layernorm.weight", (h,)),
            (f"{p}.mlp.gate_proj.weight", (inter, h)),
            (f"{p}.mlp.up_proj.weight", (inter, h)),
            (f"{p}.mlp.down_proj.weight", (h, inter)),
        ]
    shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return shapes


def padded_tokenizer(sp_model: bytes, vocab_size: int) -> bytes:
    """The toy's SentencePiece model padded with UNUSED pieces (never produced by encoding) to
    the stand-in's vocabulary size, so the tokenizer stays the reference one."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = pb.ModelProto.FromString(sp_model)
    n = len(model.pieces)
    if n > vocab_size:
        raise ValueError(f"tokenizer has {n} pieces, more than {vocab_size}")
    for i in range(n, vocab_size):
        piece = model.pieces.add()
        piece.piece, piece.score, piece.type = f"<unused_{i}>", -1e9, pb.ModelProto.SentencePiece.UNUSED
    return model.SerializeToString()


def build_standin(
    out: Path,
    tokenizer_folder: Path,
    config: dict | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the stand-in checkpoint into `out` (built in a temp folder, then renamed)."""
    config = {**WILDGUARD_CONFIG, **(config or {})}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        sp = padded_tokenizer((tokenizer_folder / "tokenizer.model").read_bytes(), config["vocab_size"])
        (tmp / "tokenizer.model").write_bytes(sp)
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (tokenizer_folder / name).is_file():
                shutil.copyfile(tokenizer_folder / name, tmp / name)
        _write_random_safetensors(tmp / "model.safetensors", tensor_shapes(config), seed, progress)
        publishable(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_random_safetensors(path: Path, shapes, seed: int, progress) -> None:
    header, offset = {}, 0
    for name, shape in shapes:
        nbytes = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for i, (_, shape) in enumerate(shapes):
            if len(shape) == 1:
                values = np.ones(shape, dtype=np.float32)  # norms: identity scale
            else:
                values = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
            # bf16 = the high half of the float32 bits (truncation is fine for random weights).
            f.write((values.view(np.uint32) >> 16).astype(np.uint16).tobytes())
            del values
            if progress:
                progress(i + 1, len(shapes))
