"""Many chats at once: N streams on one classifier (`wildguard-lite bench concurrent-streams`).

    wildguard-lite bench concurrent-streams --model standin-q4_k_m.gguf --streams 8 --out report.json

Each of N streams moderates a ~`--tokens` answer fed in 8-16-token chunks, checked every 16
tokens, four ways on the same model and texts:
  sequential   the streams one after another (the reference for tokens and time);
  round-robin  one thread feeding the streams in turn (each stream keeps its own KV sequence);
  threads      N threads, each feeding its own stream, the checks of a round coinciding (a
               barrier per chunk: a chat server whose answers arrive together);
  oneshot      `classify` of each final text (the verdicts every stream must end with).
Reported: tokens evaluated (ratios to sequential), wall time ratios, engine rounds per round of
coinciding checks, the per-token cost of a batched round against one long raw prefill, and
whether each final verdict equals the one-shot verdict (a label within 0.05 of P=0.5 may differ).
Random-weight stand-ins answer neither yes nor no: `--force-answer no` biases every answer
so each check does a real check's engine work.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from .data import write_json
from wildguard_lite.contract import LABEL_KEYS
from wildguard_lite.defaults import default_threads
from wildguard_lite.flags import add_runtime_flags
from wildguard_lite.streaming import DEFAULT_INTERVAL_TOKENS

from .streaming import chunk_text, response_of

PROMPTS = [
    "Tell me about the history of the river towns.",
    "How do markets in old trade cities work?",
    "What did travellers write about the weather there?",
    "Describe the food of the coastal region.",
    "Summarise how the roads shaped the towns.",
    "Who were the merchants of the northern ports?",
    "Explain the festivals of the valley.",
    "What crafts were the towns known for?",
]


class ForcedAnswers:
    """Bias one answer id on every logits row the engine returns (random-weight stand-ins)."""

    def __init__(self, backend, answer_id: int | None):
        if answer_id is None:
            return
        logits_at = backend.logits_at

        def forced(ids, positions, *args, **kw):  # the engine's signature (interrupt included)
            out = logits_at(ids, positions, *args, **kw)
            for row in out:
                row[answer_id] += 1e4
            return out

        backend.logits_at = forced


def texts_for(clf, n: int, tokens: int, seed: int) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = PROMPTS[i % len(PROMPTS)] + (f" (chat {i})" if i >= len(PROMPTS) else "")
        response = response_of(clf.tokenizer, tokens, f"Answer {i}: ")
        out.append((prompt, chunk_text(clf.tokenizer, response, rng)))
    return out


def run_sequential(clf, chats, interval):
    finals = []
    for prompt, chunks in chats:
        stream = clf.stream(prompt, interval=interval)
        for c in chunks:
            stream.feed(c)
        finals.append(stream.close())
    return finals


def run_round_robin(clf, chats, interval):
    streams = [clf.stream(p, interval=interval) for p, _ in chats]
    for k in range(max(len(c) for _, c in chats)):
        for stream, (_, chunks) in zip(streams, chats):
            if k < len(chunks):
                stream.feed(chunks[k])
    return [s.close() for s in streams]


def run_threads(clf, chats, interval):
    steps = max(len(c) for _, c in chats)
    barrier = threading.Barrier(len(chats))
    finals: list[Any] = [None] * len(chats)
    errors: list[BaseException] = []

    def one(i, prompt, chunks):
        try:
            stream = clf.stream(prompt, interval=interval)
            for k in range(steps):
                barrier.wait()
                if k < len(chunks):
                    stream.feed(chunks[k])
            finals[i] = stream.close()
        except BaseException as exc:  # reported, never a hang of the other threads
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=one, args=(i, p, c)) for i, (p, c) in enumerate(chats)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return finals


def measured(clf, fn, *args) -> tuple[Any, dict[str, Any]]:
    backend = clf.backend
    stats = backend.stats
    before = (backend.tokens_evaluated, stats.rounds, stats.requests, stats.decode_calls)
    start = time.perf_counter()
    out = fn(clf, *args)
    wall = time.perf_counter() - start
    after = (backend.tokens_evaluated, stats.rounds, stats.requests, stats.decode_calls)
    d = [b - a for a, b in zip(before, after)]
    return out, {
        "wall_s": round(wall, 3),
        "tokens": d[0],
        "rounds": d[1],
        "requests": d[2],
        "decode_calls": d[3],
        "requests_per_round": round(d[2] / max(1, d[1]), 2),
    }


def disagreements(finals, oneshot) -> dict[str, int]:
    differ, near = 0, 0
    for a, b in zip(finals, oneshot):
        for key in LABEL_KEYS:
            if a[key] != b[key]:
                scores = [s for s in (a["scores"].get(key), b["scores"].get(key)) if s is not None]
                if scores and any(abs(s - 0.5) < 0.05 for s in scores):
                    near += 1
                else:
                    differ += 1
    return {"labels_differing": differ, "labels_differing_near_half": near}


def raw_prefill_rate(clf, n_tokens: int) -> float:
    """Tokens per second of one raw prefill of `n_tokens` new tokens on a cleared engine."""
    backend = clf.backend
    ids = [clf.tokenizer.bos_id] + [clf.tokenizer.no_id] * n_tokens
    backend.reset()
    backend.logits_at(ids[:1], [0])
    start = time.perf_counter()
    backend.logits_at(ids, [len(ids) - 1])
    return n_tokens / (time.perf_counter() - start)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--tokens", type=int, default=400, help="answer length per stream (default 400)")
    p.add_argument("--interval", type=int, default=DEFAULT_INTERVAL_TOKENS)
    # per stream; the KV pool holds two contexts by default
    add_runtime_flags(p, "threads", "n_ctx", n_ctx=2048)
    p.add_argument("--force-answer", choices=("yes", "no"))
    p.add_argument("--out", type=Path)


def run(args: argparse.Namespace) -> int:
    import wildguard_lite

    args.threads = args.threads or default_threads()
    report: dict[str, Any] = {
        "model": str(args.model),
        "streams": args.streams,
        "threads": args.threads,
        "tokens": args.tokens,
        "interval": args.interval,
    }
    with wildguard_lite.load(args.model, threads=args.threads, n_ctx=args.n_ctx, slots=args.streams) as clf:
        answer = None if args.force_answer is None else getattr(clf.tokenizer, f"{args.force_answer}_id")
        ForcedAnswers(clf.backend, answer)
        chats = texts_for(clf, args.streams, args.tokens, seed=0)
        runs = {}
        for name, fn in (("sequential", run_sequential), ("round_robin", run_round_robin), ("threads", run_threads)):
            clf.backend.reset()
            finals, runs[name] = measured(clf, fn, chats, args.interval)
            runs[name]["finals"] = finals
        clf.backend.reset()
        oneshot = clf.classify([{"prompt": p, "response": "".join(c)} for p, c in chats])
        seq = runs["sequential"]
        for name in ("round_robin", "threads"):
            run = runs[name]
            run["tokens_over_sequential"] = round(run["tokens"] / seq["tokens"], 3)
            run["wall_over_sequential"] = round(run["wall_s"] / seq["wall_s"], 3)
        for run in runs.values():
            run.update(disagreements(run.pop("finals"), oneshot))
        checks_per_stream = statistics.mean(len(c) for _, c in chats)  # chunks, an upper bound on checks
        rate_small = seq["tokens"] / seq["wall_s"]
        rate_batched = runs["threads"]["tokens"] / runs["threads"]["wall_s"]
        rate_raw = raw_prefill_rate(clf, 350)
        report.update(
            runs=runs,
            chunks_per_stream=checks_per_stream,
            tokens_per_s={
                "sequential_checks": round(rate_small, 1),
                "batched_rounds": round(rate_batched, 1),
                "raw_prefill_350": round(rate_raw, 1),
            },
            batched_round_cost_over_raw_prefill=round(rate_raw / rate_batched, 3),
        )
        report["targets"] = {
            "round_robin_tokens_le_1.1x": runs["round_robin"]["tokens_over_sequential"] <= 1.1,
            "threads_tokens_le_1.1x": runs["threads"]["tokens_over_sequential"] <= 1.1,
            "threads_wall_le_0.85x": runs["threads"]["wall_over_sequential"] <= 0.85,
        }
    if args.out:
        write_json(args.out, report)  # temp file, then rename
    print(json.dumps(report, indent=2))
    return 0
