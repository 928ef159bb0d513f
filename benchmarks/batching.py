"""One llama.cpp batch of several sequences against one after another (`wildguard-lite bench batching`).

    wildguard-lite bench batching --model toy-wildguard-q8_0.gguf --sequences 4

For the shapes score mode produces (a whole exchange; a few answer/cue tokens), K sequences
decoded in one `llama_decode` (K sequence ids) against K decodes in a row, straight through
llama.cpp's C API, median of `--repeats`. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path
from typing import Any

from wildguard_lite.defaults import default_threads
from wildguard_lite.flags import add_runtime_flags

from .traffic import PROMPTS, RESPONSES, add_report_arguments, report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="a .gguf file")
    p.add_argument("--sequences", type=int, default=4, help="sequences per batch (default 4)")
    p.add_argument("--repeats", type=int, default=20, help="timed repeats, median reported (default 20)")
    add_runtime_flags(p, "threads")
    add_report_arguments(p)


def run(args: argparse.Namespace) -> int:
    return report(measure(args), args.json_out)


def measure(args) -> dict[str, Any]:
    """K sequences decoded one after another vs in one llama.cpp batch (K sequence ids)."""
    import llama_cpp as L

    from wildguard_lite.gguf_meta import read_gguf_info
    from wildguard_lite.tokenization import WildGuardTokenizer

    tok = WildGuardTokenizer(read_gguf_info(args.model).tokenizer)
    rng = random.Random(args.seed)
    L.llama_backend_init()
    mparams = L.llama_model_default_params()
    mparams.use_extra_bufts = False  # as the runtime (repack off)
    model = L.llama_model_load_from_file(str(args.model).encode(), mparams)
    k = args.sequences
    threads = args.threads or default_threads()
    cparams = L.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = 512 * k, 512 * k, 512 * k
    cparams.n_seq_max, cparams.n_threads, cparams.n_threads_batch = k, threads, threads
    ctx = L.llama_init_from_model(model, cparams)
    memory = L.llama_get_memory(ctx)

    def decode(seqs: list[tuple[int, list[int], int]]) -> None:
        """One llama_decode of (seq_id, tokens, first position) groups; logits at each last token."""
        n = sum(len(t) for _, t, _ in seqs)
        batch = L.llama_batch_init(n, 0, 1)
        i = 0
        for seq_id, tokens, pos0 in seqs:
            for j, token in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos0 + j, 1
                batch.seq_id[i][0] = seq_id
                batch.logits[i] = j == len(tokens) - 1
                i += 1
        batch.n_tokens = n
        if L.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        L.llama_batch_free(batch)

    exchanges = [
        tok.encode_exchange(rng.choice(PROMPTS), rng.choice(RESPONSES)) + list(tok.cue_ids[0]) for _ in range(k)
    ]
    step = [tok.yes_id, *tok.cue_ids[1]]  # what score mode evaluates after the first answer
    results: dict[str, Any] = {"model": str(args.model), "sequences": k, "threads": threads}
    for shape in ("whole_exchange", "answer_step"):
        timings = {"sequential": [], "batched": []}
        for _ in range(args.repeats):
            for how in ("sequential", "batched"):
                L.llama_memory_clear(memory, True)
                if shape == "answer_step":  # the exchanges are already in the cache
                    for s, ids in enumerate(exchanges):
                        decode([(s, ids, 0)])
                groups = (
                    [(s, step, len(ids)) for s, ids in enumerate(exchanges)]
                    if shape == "answer_step"
                    else [(s, ids, 0) for s, ids in enumerate(exchanges)]
                )
                start = time.perf_counter()
                if how == "sequential":
                    for group in groups:
                        decode([group])
                else:
                    decode(groups)
                timings[how].append(time.perf_counter() - start)
        tokens = sum(len(g[1]) for g in groups)
        seq, bat = statistics.median(timings["sequential"]), statistics.median(timings["batched"])
        results[shape] = {
            "tokens": tokens,
            "sequential_ms": round(seq * 1000, 3),
            "batched_ms": round(bat * 1000, 3),
            "batched_speedup": round(seq / bat, 2),
        }
    L.llama_free(ctx)
    L.llama_model_free(model)
    return results
