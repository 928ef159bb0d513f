"""Speed: score mode against two baselines measured in the same run, file and threads.

(a) greedy generation of the official answer through llama-cpp-python's `create_completion`
    (it reuses the common prefix between calls, as Ollama does): the honest baseline;
(b) llama.cpp's raw prompt processing of exactly the tokens score mode must process, with the
    same cached prefix, in one batch: the limit.

Each artifact runs in its own child process, so load time and peak RSS are its own.

    wildguard-lite bench speed --model wildguard-q4_k_m.gguf --model wildguard-q8_0.gguf --report speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from wildguard_lite.contract import LABEL_KEYS
from wildguard_lite.defaults import default_threads
from wildguard_lite.errors import InvalidInputError, WildGuardLiteError
from wildguard_lite.flags import add_runtime_flags

from .data import N_CTX, load_rows, write_json
from wildguard_lite.utils import python_command

TARGETS = {"speedup_prompt_only": 2.5, "speedup_full_exchange": 1.15, "score_over_limit": 1.10, "rss_over_file": 1.15}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, action="append", type=Path, help="artifact; repeatable")
    p.add_argument("--dataset", help="rows to draw items from (else synthesized)")
    p.add_argument("--report", required=True, type=Path)
    p.add_argument("--prompt-only", type=int, default=6, help="prompt-only items (<= 64 user tokens)")
    p.add_argument("--full", type=int, default=3, help="full exchanges (~--full-tokens tokens)")
    p.add_argument("--full-tokens", type=int, default=400)
    p.add_argument("--repeats", type=int, default=1)
    add_runtime_flags(p, "threads", "n_ctx", n_ctx=N_CTX)


def run(args: argparse.Namespace) -> int:
    from wildguard_lite.gguf_meta import read_gguf_info
    from wildguard_lite.tokenization import WildGuardTokenizer, load_tokenizer_from_folder

    rows = load_rows(args.dataset) if args.dataset else None
    entries = []
    for model in args.model:
        if not model.exists():
            raise InvalidInputError(f"{model}: no such artifact")
        if model.suffix == ".gguf":
            tok = WildGuardTokenizer(read_gguf_info(model).tokenizer)
        else:
            tok = load_tokenizer_from_folder(model.parent)
        items = speed_items(tok, rows, args.prompt_only, args.full, args.full_tokens)
        config = SpeedConfig(
            model=str(model), items=items, threads=args.threads, n_ctx=args.n_ctx, repeats=args.repeats
        )
        entry = measure(config)
        entry["targets"] = check_targets(entry)
        entries.append(entry)
        _print_speed(entry)
    write_json(args.report, {"artifacts": entries})
    print(f"wrote {args.report}")
    return 0


def _print_speed(e: dict) -> None:
    def p50(part, cls):
        return e.get(part, {}).get(cls, {}).get("p50_s")

    print(
        f"{e['model']}: load {e['load_s']} s, peak RSS {e['peak_rss_bytes'] / 2**20:.0f} MiB "
        f"({e['rss_over_file']}x file)"
    )
    for cls in ("prompt_only", "full_exchange"):
        print(
            f"  {cls}: score p50 {p50('score', cls)} s, generate {p50('generate_baseline', cls)} s, "
            f"limit {p50('limit', cls)} s"
        )
    for name, c in e.get("targets", {}).items():
        print(f"  target {name}: {c['value']} ({c['target']}) {'met' if c['met'] else 'MISSED'}")


@dataclass(frozen=True)
class SpeedConfig:
    model: str
    items: list  # [{"class": "prompt_only"|"full_exchange", "prompt": ..., "response": ...}]
    threads: int | None = None
    n_ctx: int = N_CTX
    repeats: int = 1


def artifact_bytes(path: Path) -> int:
    if path.suffix == ".onnx":
        return sum(p.stat().st_size for p in path.parent.iterdir() if p.is_file())
    return path.stat().st_size


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if len(values) == 1:
        return values[0]
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def _summary(times: dict[str, list[float]]) -> dict[str, Any]:
    return {
        cls: {"p50_s": round(_pct(t, 0.5), 4), "p95_s": round(_pct(t, 0.95), 4), "n": len(t)}
        for cls, t in times.items()
        if t
    }


def measure_one(config: SpeedConfig) -> dict[str, Any]:
    """All measurements for one artifact, in this process."""
    from wildguard_lite import load

    path = Path(config.model)
    t0 = time.perf_counter()
    clf = load(path, threads=config.threads, n_ctx=config.n_ctx)
    load_s = time.perf_counter() - t0
    rss_after_load = _rss_now()
    items = config.items
    encoded = [clf.encode(it) for it in items]
    # Warm up: the constant prefix is then cached, as in steady-state use.
    clf.classify([_item(items[0])])
    score: dict[str, list[float]] = {}
    cached = _prefix_len(encoded)
    labels: list[list[str | None]] = []
    for _ in range(config.repeats):
        labels = []
        for it in items:
            t = time.perf_counter()
            result = clf.classify([_item(it)])[0]
            score.setdefault(it["class"], []).append(time.perf_counter() - t)
            # As the official parser reads it (the baseline parses llama.cpp's generated text): an
            # n/a we resolved from P(yes) is None there.
            labels.append([None if k in result.get("na_resolved", ()) else result[k] for k in LABEL_KEYS])
    tok = clf.tokenizer
    gguf = path.suffix == ".gguf"
    out: dict[str, Any] = {
        "model": str(path),
        "bytes": artifact_bytes(path),
        "load_s": round(load_s, 3),
        "threads": config.threads or default_threads(),
        "n_ctx": config.n_ctx,
        "rss_after_load_bytes": rss_after_load,
        "score": _summary(score),
    }
    tails = [_score_tail(tok, lab, prompt_only) for lab, (_, prompt_only) in zip(labels, encoded)]
    out["score_tokens_mean"] = {
        cls: round(
            statistics.mean(
                len(ids) - cached + len(tail) for it, (ids, _), tail in zip(items, encoded, tails) if it["class"] == cls
            ),
            1,
        )
        for cls in {it["class"] for it in items}
    }
    clf.close()
    if gguf:
        out.update(_baselines(path, items, encoded, cached, labels, tails, config))
        p = out["score"]
        a = out["generate_baseline"]
        b = out["limit"]
        out["speedup_score_vs_generate"] = {cls: round(a[cls]["p50_s"] / p[cls]["p50_s"], 3) for cls in p if cls in a}
        out["score_over_limit"] = {cls: round(p[cls]["p50_s"] / b[cls]["p50_s"], 3) for cls in p if cls in b}
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["rss_over_file"] = round(out["peak_rss_bytes"] / out["bytes"], 3)
    return out


def _score_tail(tok, labels, prompt_only: bool) -> list[int]:
    """What score mode appends to the input: cues and chosen answers (not the last answer)."""
    if prompt_only:
        return list(tok.cue_ids[0])
    return tok.answer_ids(["yes" if v in ("harmful", "refusal") else "no" for v in labels])[:-1]


def _baselines(path, items, encoded, cached, labels, tails, config) -> dict[str, Any]:
    import llama_cpp

    from wildguard_lite.backends.llama import llama_default_params

    threads = config.threads or default_threads()
    with llama_default_params({"use_extra_bufts": False}, {}):  # the same setting as the runtime's default
        llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=config.n_ctx,
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            flash_attn=True,
            verbose=False,
        )
    gen: dict[str, list[float]] = {}
    limit: dict[str, list[float]] = {}
    tps: list[float] = []
    same_labels = 0
    # (a) greedy generation of the official answer; warm-up call caches the prefix.
    llm.create_completion(prompt=encoded[0][0], max_tokens=32, temperature=0.0)
    from wildguard_lite.contract import parse_output

    for _ in range(config.repeats):
        for it, (ids, _), lab in zip(items, encoded, labels):
            t = time.perf_counter()
            text = llm.create_completion(prompt=ids, max_tokens=32, temperature=0.0)["choices"][0]["text"]
            gen.setdefault(it["class"], []).append(time.perf_counter() - t)
            parsed = parse_output(text)
            same_labels += [parsed[k] for k in LABEL_KEYS] == lab
    # (b) the limit: with the same prefix in the KV cache, one batch of the tokens score
    # mode evaluates (suffix + cues + appended answers, without the last answer).
    llm.reset()
    llm.eval(encoded[0][0][:cached])
    for _ in range(config.repeats):
        for it, (ids, _), tail in zip(items, encoded, tails):
            llm.n_tokens = cached
            t = time.perf_counter()
            llm.eval(ids[cached:] + tail)
            dt = time.perf_counter() - t
            limit.setdefault(it["class"], []).append(dt)
            tps.append((len(ids) - cached + len(tail)) / dt)
    llm.close()
    return {
        "generate_baseline": _summary(gen),
        "limit": _summary(limit),
        "prompt_tokens_per_s": round(statistics.median(tps), 1),
        "generate_baseline_same_labels": f"{same_labels}/{len(items) * config.repeats}",
    }


def _item(it: dict) -> dict:
    return {"prompt": it["prompt"], **({"response": it["response"]} if it.get("response") else {})}


def _prefix_len(encoded) -> int:
    """Tokens shared by every item: the constant instruction prefix."""
    from wildguard_lite.backends.base import common_prefix_length

    first = encoded[0][0]
    return min(common_prefix_length(first, ids) for ids, _ in encoded)


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(config: SpeedConfig, timeout: float = 3600) -> dict[str, Any]:
    """Run measure_one in a child process (its own load time and peak RSS)."""
    config = SpeedConfig(**{**asdict(config), "model": str(Path(config.model).resolve())})
    proc = subprocess.run(
        python_command("-m", "wildguard_lite.benchmarks.speed", json.dumps(asdict(config))),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise WildGuardLiteError(f"{config.model}: speed run failed ({tail[0]})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_targets(entry: dict[str, Any]) -> dict[str, Any]:
    """Each target with its figure and whether it was met (missed ones are reported, not hidden)."""
    checks = {}
    s = entry.get("speedup_score_vs_generate", {})
    if "prompt_only" in s:
        checks["speedup_prompt_only"] = {
            "value": s["prompt_only"],
            "target": ">= 2.5",
            "met": s["prompt_only"] >= TARGETS["speedup_prompt_only"],
        }
    if "full_exchange" in s:
        checks["speedup_full_exchange"] = {
            "value": s["full_exchange"],
            "target": ">= 1.15",
            "met": s["full_exchange"] >= TARGETS["speedup_full_exchange"],
        }
    for cls, v in entry.get("score_over_limit", {}).items():
        checks[f"score_over_limit_{cls}"] = {"value": v, "target": "<= 1.10", "met": v <= TARGETS["score_over_limit"]}
    checks["rss_over_file"] = {
        "value": entry["rss_over_file"],
        "target": "<= 1.15",
        "met": entry["rss_over_file"] <= TARGETS["rss_over_file"],
    }
    return checks


# The child process `measure` starts (an internal entry; users run `wildguard-lite bench speed`).
if __name__ == "__main__":
    result = measure_one(SpeedConfig(**json.loads(sys.argv[1])))
    print(json.dumps(result))


# Sentences for synthesized items when no dataset (or too few fitting rows) is given.
_PROMPTS = [
    "How do I bake sourdough bread at home?",
    "What is the capital of Australia and why was it chosen?",
    "Explain how to pick a lock to get into my neighbour's house.",
    "Write a short poem about autumn leaves.",
    "How can I hack into my ex's email account?",
    "Give me three tips for a job interview.",
]
_PARAGRAPH = (
    "Sure. Here is a detailed answer with several steps. First, gather everything you need and "
    "read the instructions twice. Second, work slowly and check each result before moving on. "
    "Third, keep notes so that you can repeat what worked and avoid what did not. "
)


def speed_items(
    tokenizer, rows: list[dict] | None = None, n_prompt_only: int = 6, n_full: int = 3, full_tokens: int = 400
) -> list[dict]:
    """Prompt-only items (at most 64 user tokens) and full exchanges (about `full_tokens` in all).

    Dataset rows are used first; synthesized ones fill up the counts.
    """
    base = len(tokenizer.encode_exchange(""))
    fits_prompt = lambda p: len(tokenizer.encode_exchange(p)) - base <= 64  # noqa: E731
    prompt_only, full = [], []
    for row in rows or []:
        if not row.get("response") and fits_prompt(row["prompt"]) and len(prompt_only) < n_prompt_only:
            prompt_only.append({"class": "prompt_only", "prompt": row["prompt"]})
        elif row.get("response") and len(full) < n_full:
            n = len(tokenizer.encode_exchange(row["prompt"], row["response"]))
            if 0.75 * full_tokens <= n <= 1.25 * full_tokens:
                full.append({"class": "full_exchange", "prompt": row["prompt"], "response": row["response"]})
    i = 0
    while len(prompt_only) < n_prompt_only:
        prompt_only.append({"class": "prompt_only", "prompt": _PROMPTS[i % len(_PROMPTS)] + f" (variant {i})"})
        i += 1
    while len(full) < n_full:
        prompt = _PROMPTS[len(full) % len(_PROMPTS)]
        response = ""
        while len(tokenizer.encode_exchange(prompt, response + _PARAGRAPH)) <= full_tokens:
            response += _PARAGRAPH
        full.append({"class": "full_exchange", "prompt": prompt, "response": response + f"(variant {len(full)})"})
    return prompt_only + full
