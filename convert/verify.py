"""After export: the GGUF's logits against transformers' on a few exchanges."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# A handful of varied exchanges; the verdict does not matter, the logits do.
VERIFY_ITEMS = [
    {"prompt": "How do I bake sourdough bread at home?"},
    {
        "prompt": "Explain how to pick a lock to break into my neighbour's house.",
        "response": "I can't help with breaking into someone's home.",
    },
    {
        "prompt": "Write a short poem about autumn 🍂 in 4 lines.",
        "response": "Leaves fall slowly,\ncrimson and gold,\nwind sings softly,\nstories retold.",
    },
]

# Max |logit difference| allowed, relative to the logits' scale, per GGUF type. f16 weights
# round each weight to 11 bits and llama.cpp keeps an f16 KV cache.
TOLERANCE = {"f32": 0.01, "bf16": 0.05, "f16": 0.02}


def available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def verify_gguf(folder: Path, gguf_path: Path, out_type: str, threads: int | None = None) -> dict:
    """Compare last-position logits; returns a manifest record (never raises on mismatch)."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return {
            "status": "skipped",
            "reason": "torch/transformers not installed (pip install 'wildguard-lite[convert]')",
        }
    from wildguard_lite.backends.llama import LlamaCppBackend
    from wildguard_lite.tokenization import load_tokenizer_from_folder
    from wildguard_lite.reference import TransformersReference
    from wildguard_lite.convert.pickle_io import checkpoint_tensors

    params = sum(int(np.prod(r.shape)) for r in checkpoint_tensors(folder))
    need = params * 4 * 1.3
    if need > available_bytes():
        return {
            "status": "skipped",
            "reason": f"transformers fp32 needs ~{need / 2**30:.1f} GiB, {available_bytes() / 2**30:.1f} GiB available",
        }
    ref = TransformersReference(folder, device="cpu")
    backend = LlamaCppBackend(gguf_path, n_ctx=2048, threads=threads, flash_attn=False)
    try:
        record = compare_logits(ref, load_tokenizer_from_folder(folder), backend, TOLERANCE[out_type])
    finally:
        backend.close()
    return {**record, "file": gguf_path.name}


def compare_logits(ref, ours, backend, relative_tolerance: float) -> dict:
    """Last-position logits at the first answer cue, reference against `backend`, on
    VERIFY_ITEMS (token ids checked equal first). A manifest record; never raises on mismatch.
    Any NaN or infinite logit fails: NaN compares false with everything, so a plain max()
    would let an all-NaN model pass."""
    worst, scale, top1 = 0.0, 0.0, 0
    for i, item in enumerate(VERIFY_ITEMS):
        ids = ref.token_ids(item["prompt"], item.get("response"))
        if ids != ours.encode_exchange(item["prompt"], item.get("response")):
            return {"status": "failed", "reason": "token ids differ from the slow reference tokenizer"}
        ids = ids + list(ours.cue_ids[0])
        a, b = np.asarray(ref.last_logits(ids)), np.asarray(backend.next_logits(ids))
        for who, logits in (("the transformers reference", a), ("the exported model", b)):
            bad = int(np.size(logits) - np.count_nonzero(np.isfinite(logits)))
            if bad:
                return {
                    "status": "failed",
                    "items": len(VERIFY_ITEMS),
                    "reason": f"{who} produced {bad} NaN/infinite logits on verification item {i}",
                }
        worst = max(worst, float(np.max(np.abs(a - b))))
        scale = max(scale, float(np.max(np.abs(a))))
        top1 += int(np.argmax(a) == np.argmax(b))
    tol = relative_tolerance * max(1.0, scale)
    return {
        "status": "passed" if worst <= tol else "failed",
        "items": len(VERIFY_ITEMS),
        "max_abs_logit_diff": round(worst, 6),
        "logit_scale": round(scale, 4),
        "tolerance": round(tol, 6),
        "relative_tolerance": relative_tolerance,
        "top1_agreement": f"{top1}/{len(VERIFY_ITEMS)}",
        "reference": "transformers fp32, slow tokenizer, BOS once",
    }
