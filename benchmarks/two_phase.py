"""The guardrail pattern through the prefix cache (`wildguard-lite bench two-phase`).

    wildguard-lite bench two-phase --model toy-wildguard-q8_0.gguf

A prompt is checked alone (a gateway's pre-check), other traffic follows, then the same prompt
comes back with a response: the second phase's time and tokens evaluated, with and without
the KV prefix cache `serve` keeps (`--prefix-cache-mb`). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path
from typing import Any

from wildguard_lite.flags import add_runtime_flags

from .traffic import PROMPTS, RESPONSES, add_report_arguments, report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="a .gguf file")
    p.add_argument("--prompt-repeat", type=int, default=6, help="how long the prompts are, in sentences (default 6)")
    add_runtime_flags(p, "threads")
    add_report_arguments(p)


def run(args: argparse.Namespace) -> int:
    return report(measure(args), args.json_out)


def measure(args) -> dict[str, Any]:
    """Prompt, then unrelated traffic, then the same prompt with a response; phase 2 timed."""
    import wildguard_lite
    from wildguard_lite.backends.llama import PrefixStateCache

    rng = random.Random(args.seed)
    long_prompts = [p + " " + " ".join(rng.choice(PROMPTS) for _ in range(args.prompt_repeat)) for p in PROMPTS]
    out: dict[str, Any] = {"model": str(args.model), "prompts": len(long_prompts)}
    for label, cache_mb in (("without_cache", 0), ("with_cache", 256)):
        clf = wildguard_lite.load(
            args.model,
            threads=args.threads or None,
            prefix_cache=PrefixStateCache(int(cache_mb * 2**20)) if cache_mb else None,
        )
        clf.classify([{"prompt": "warm up"}])
        times, tokens = [], []
        for prompt in long_prompts:
            clf.classify([{"prompt": prompt}])  # phase 1: the pre-check
            clf.classify([{"prompt": rng.choice(PROMPTS) + " (another user)"}])  # other traffic
            before = clf.backend.tokens_evaluated
            start = time.perf_counter()
            clf.classify([{"prompt": prompt, "response": rng.choice(RESPONSES)}])  # phase 2
            times.append(time.perf_counter() - start)
            tokens.append(clf.backend.tokens_evaluated - before)
        out[label] = {
            "phase2_ms_median": round(statistics.median(times) * 1000, 2),
            "phase2_tokens_mean": round(statistics.mean(tokens), 1),
        }
        if cache_mb:
            out[label]["cache_bytes"] = clf.backend.prefix_cache.bytes
        clf.close()
    out["phase2_speedup"] = round(out["without_cache"]["phase2_ms_median"] / out["with_cache"]["phase2_ms_median"], 2)
    return out
