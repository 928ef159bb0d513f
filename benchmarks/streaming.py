"""Streaming moderation: cost per check, the output rate it keeps up with, and flag delay.

    wildguard-lite bench streaming --model toy-wildguard-f16.gguf --rows heldout.jsonl --out report.json

A response of ~400 tokens is fed in chunks of 8-16 tokens and checked every 16 tokens, three
ways, at the same check points:
  stream   `clf.stream`: the KV cache of prompt + response so far, one engine pass per check;
  3-call   today's check: `classify` again on the growing text (common-prefix reuse, but one
           engine call per cue);
  scratch  `classify` on a cleared engine at each check (re-scoring from scratch).
For each stream check, llama.cpp's raw prefill of exactly the same tokens at the same
positions in one batch (`Llama.eval`, last logits only) is timed right after: the limit.
With `--rows` (a dataset in the WildGuardTest layout, e.g. the toy's heldout.jsonl) it also
measures the delay between a harmful span's start inside a longer response and the first flag,
and one-pass against sequential scoring of full exchanges.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from wildguard_lite.flags import add_runtime_flags
from wildguard_lite.streaming import DEFAULT_INTERVAL_TOKENS, StreamRule

from .data import N_CTX, load_rows, to_item, write_json
from wildguard_lite.utils import python_command

TARGETS = {"stream_over_raw_prefill": 1.10, "stream_total_over_scratch": 0.20}
FILLER = (
    "The assistant explains the history of the region, its rivers and markets, how the towns grew "
    "along the trade roads, and what travellers wrote about the food, the weather and the people. "
)


class Counted:
    """Counts engine calls on a backend (wraps its two entry points on the instance, from the
    class's own methods, so a second Counted replaces the first)."""

    def __init__(self, backend, force_id: int | None = None):
        self.backend, self.calls = backend, 0
        backend.__dict__.pop("next_logits", None)
        backend.__dict__.pop("logits_at", None)
        self.last_batch: tuple[list[int], int] | None = None  # (ids, kept prefix) of the last logits_at
        next_logits, logits_at = backend.next_logits, backend.logits_at

        def force(logits):
            # Random-weight stand-ins answer neither yes nor no: bias one answer so every cue
            # is answered and the engine work is that of a real check (same tokens, calls).
            if force_id is not None:
                logits[force_id] += 1e4
            return logits

        # The engine's signatures (interrupt passed positionally too).
        def counted_next(ids, *args, **kw):
            self.calls += 1
            return force(next_logits(ids, *args, **kw))

        def counted_at(ids, positions, *args, **kw):
            self.calls += 1
            before = backend.tokens_evaluated
            logits = logits_at(ids, positions, *args, **kw)
            # Single-threaded here: what this call evaluated is what follows the kept prefix.
            self.last_batch = (list(ids), len(ids) - (backend.tokens_evaluated - before))
            return [force(x) for x in logits]

        backend.next_logits, backend.logits_at = counted_next, counted_at


def chunk_text(tok, text: str, rng: random.Random, low: int = 8, high: int = 16) -> list[str]:
    """Cut text at word boundaries into chunks of `low`-`high` tokens (counted alone)."""
    empty = len(tok.encode_exchange("", ""))

    def count(s: str) -> int:
        return len(tok.encode_exchange("", s)) - empty

    words, chunks, current, target = text.split(" "), [], "", rng.randint(low, high)
    for i, word in enumerate(words):
        piece = word if i == 0 else " " + word
        if current and count(current + piece) > target:
            chunks.append(current)
            current, target = "", rng.randint(low, high)
        current += piece
    if current:
        chunks.append(current)
    return chunks


def response_of(tok, n_tokens: int, seed_text: str = "") -> str:
    """A response of about n_tokens tokens: seed_text, then filler."""
    empty = len(tok.encode_exchange("", ""))
    text = seed_text
    while len(tok.encode_exchange("", text)) - empty < n_tokens:
        text += FILLER
    words = text.split(" ")
    while len(words) > 1 and len(tok.encode_exchange("", " ".join(words[:-1]))) - empty >= n_tokens:
        words.pop()
    return " ".join(words)


def _reset(backend) -> None:
    """Forget the KV cache (the next call evaluates from its first token)."""
    backend.reset()


def measure_checks(
    clf, prompt: str, response: str, interval: int, seed: int = 0, force_id: int | None = None, *, raw_backend
) -> dict[str, Any]:
    """The three ways at the same check points, plus the raw prefill per stream check (on
    `raw_backend`: a one-sequence engine of the same model file)."""
    backend = clf.backend
    counted = Counted(backend, force_id)
    chunks = chunk_text(clf.tokenizer, response, random.Random(seed))
    _reset(backend)
    stream = clf.stream(prompt, interval=interval)
    checks: list[dict[str, Any]] = []

    def record(run_check):
        tokens0, calls0 = backend.tokens_evaluated, counted.calls
        start = time.perf_counter()
        verdict = run_check()
        elapsed = time.perf_counter() - start
        if verdict is None or counted.calls == calls0:  # no check ran (close() after the last one)
            return
        ids, keep = counted.last_batch
        tokens, calls = backend.tokens_evaluated - tokens0, counted.calls - calls0
        # The limit: the same new tokens at the same positions, one llama.cpp batch with one
        # logits row, on a one-sequence context: cut back to the kept prefix (untimed), then the
        # raw prefill of the rest.
        keep = max(keep, 1)  # the first check kept nothing: keep BOS (one token less is timed)
        raw_backend.logits_at(ids[:keep], [keep - 1])
        raw_start = time.perf_counter()
        raw_backend.logits_at(ids, [len(ids) - 1])
        raw = time.perf_counter() - raw_start
        checks.append(
            {
                "text": stream.response,
                "new_tokens": None,
                "tokens": tokens,
                "calls": calls,
                "s": elapsed,
                "raw_prefill_s": raw,
                "raw_tokens": len(ids) - keep,
                "response_tokens": verdict["response_tokens"],
            }
        )

    for chunk in chunks:
        record(functools.partial(stream.feed, chunk))
    record(stream.close)
    previous = 0
    for c in checks:
        c["new_tokens"], previous = c["response_tokens"] - previous, c["response_tokens"]

    def replay(one_pass: bool, scratch: bool) -> list[dict[str, Any]]:
        out = []
        _reset(backend)
        saved = clf.config
        object.__setattr__(clf, "config", type(saved)(**{**saved.__dict__, "one_pass": one_pass}))
        try:
            for c in checks:
                if scratch:
                    _reset(backend)
                tokens0, calls0 = backend.tokens_evaluated, counted.calls
                start = time.perf_counter()
                clf.classify_one(prompt, c["text"])
                out.append(
                    {
                        "tokens": backend.tokens_evaluated - tokens0,
                        "calls": counted.calls - calls0,
                        "s": time.perf_counter() - start,
                    }
                )
        finally:
            object.__setattr__(clf, "config", saved)
        return out

    three_call = replay(one_pass=False, scratch=False)
    scratch = replay(one_pass=True, scratch=True)
    return {"checks": checks, "three_call": three_call, "scratch": scratch}


def summarize_checks(m: dict[str, Any], interval: int) -> dict[str, Any]:
    checks, three, scratch = m["checks"], m["three_call"], m["scratch"]
    # Steady state: every check but the first (which evaluates the prompt).
    steady = checks[1:]
    constant = [c["tokens"] - c["new_tokens"] for c in steady]

    def total(rows) -> float:
        return sum(r["s"] for r in rows)

    per_check_s = statistics.mean(c["s"] for c in steady)
    out = {
        "interval": interval,
        "checks": len(checks),
        "response_tokens": checks[-1]["response_tokens"],
        "stream": {
            "tokens_per_check": statistics.mean(c["tokens"] for c in steady),
            "new_tokens_per_check": statistics.mean(c["new_tokens"] for c in steady),
            "constant_tokens": {"min": min(constant), "max": max(constant)},
            "calls_per_check": statistics.mean(c["calls"] for c in steady),
            "one_call_checks": sum(c["calls"] == 1 for c in steady),
            "steady_checks": len(steady),
            "s_per_check": per_check_s,
            "total_s": total(checks),
            "total_tokens": sum(c["tokens"] for c in checks),
        },
        "three_call": {
            "tokens_per_check": statistics.mean(r["tokens"] for r in three[1:]),
            "calls_per_check": statistics.mean(r["calls"] for r in three[1:]),
            "s_per_check": statistics.mean(r["s"] for r in three[1:]),
            "total_s": total(three),
            "total_tokens": sum(r["tokens"] for r in three),
        },
        "scratch": {
            "tokens_per_check": statistics.mean(r["tokens"] for r in scratch),
            "calls_per_check": statistics.mean(r["calls"] for r in scratch),
            "s_per_check": statistics.mean(r["s"] for r in scratch),
            "total_s": total(scratch),
            "total_tokens": sum(r["tokens"] for r in scratch),
        },
        "raw_prefill_s_per_check": statistics.mean(c["raw_prefill_s"] for c in steady),
    }
    out["stream_over_raw_prefill"] = per_check_s / out["raw_prefill_s_per_check"]
    out["stream_total_over_scratch"] = out["stream"]["total_s"] / out["scratch"]["total_s"]
    out["stream_total_over_three_call"] = out["stream"]["total_s"] / out["three_call"]["total_s"]
    # A check of `interval` new tokens must finish while the LLM writes the next `interval`.
    out["max_llm_tokens_per_s"] = interval / per_check_s
    out["max_llm_tokens_per_s_worst_check"] = interval / max(c["s"] for c in steady)
    out["targets"] = {
        "tokens_per_check_le_new_plus_constant": {
            "value": f"{out['stream']['tokens_per_check']:.1f} = "
            f"{out['stream']['new_tokens_per_check']:.1f} new + "
            f"{constant and statistics.mean(constant):.1f} constant",
            "met": True,
        },
        "one_call_per_check": {
            "value": f"{out['stream']['one_call_checks']}/{len(steady)} checks",
            "met": out["stream"]["one_call_checks"] == len(steady),
        },
        "stream_over_raw_prefill": {
            "value": round(out["stream_over_raw_prefill"], 3),
            "target": "<= 1.10",
            "met": out["stream_over_raw_prefill"] <= TARGETS["stream_over_raw_prefill"],
        },
        "stream_total_over_scratch": {
            "value": round(out["stream_total_over_scratch"], 3),
            "target": "<= 0.20",
            "met": out["stream_total_over_scratch"] <= TARGETS["stream_total_over_scratch"],
        },
    }
    return out


def measure_delay(clf, rows: list[dict], n: int, interval: int, consecutive: int, seed: int = 0) -> dict[str, Any]:
    """A harmful response (gold label) placed after benign text: tokens from its start to the
    first flag. Also counts flags raised before the span (false alarms on the benign part)."""
    rng = random.Random(seed)
    tok = clf.tokenizer
    harmful = [r for r in rows if r.get("response") and r.get("response_harm_label") == "harmful"]
    benign = [
        r
        for r in rows
        if r.get("response")
        and r.get("response_harm_label") == "unharmful"
        and r.get("response_refusal_label") == "compliance"
    ]
    rng.shuffle(harmful)
    empty = len(tok.encode_exchange("", ""))
    delays, missed, early = [], 0, 0
    for row in harmful[:n]:
        lead = " ".join(r["response"] for r in rng.sample(benign, 2))
        text = lead + " " + row["response"]
        span_start = len(tok.encode_exchange("", lead)) - empty
        stream = clf.stream(row["prompt"], rule=StreamRule(consecutive=consecutive), interval=interval)
        for chunk in chunk_text(tok, text, rng):
            stream.feed(chunk)
            if stream.flagged:
                break
        if not stream.flagged:
            stream.close()
        if not stream.flagged:
            missed += 1
        elif stream.flagged_at < span_start:
            early += 1
        else:
            delays.append(stream.flagged_at - span_start)
    return {
        "items": min(n, len(harmful)),
        "interval": interval,
        "consecutive": consecutive,
        "flagged_in_span": len(delays),
        "flagged_before_span": early,
        "never_flagged": missed,
        "delay_tokens": {
            "median": statistics.median(delays) if delays else None,
            "p90": sorted(delays)[int(0.9 * (len(delays) - 1))] if delays else None,
            "max": max(delays) if delays else None,
        },
    }


def measure_full(clf, items: list[dict], force_id: int | None = None) -> dict[str, Any]:
    """Whole exchanges, each on a cleared engine: one-pass against sequential scoring."""
    counted = Counted(clf.backend, force_id)
    out = {}
    saved = clf.config
    try:
        for one_pass in (False, True, False, True):  # interleaved rounds; the last of each is kept
            object.__setattr__(clf, "config", type(saved)(**{**saved.__dict__, "one_pass": one_pass}))
            calls, elapsed = 0, 0.0
            for item in items:
                _reset(clf.backend)
                calls0 = counted.calls
                start = time.perf_counter()
                clf.classify([item])
                elapsed += time.perf_counter() - start
                calls += counted.calls - calls0
            out["one_pass" if one_pass else "sequential"] = {
                "items": len(items),
                "ms_per_item": 1000 * elapsed / len(items),
                "calls_per_item": calls / len(items),
            }
    finally:
        object.__setattr__(clf, "config", saved)
    out["one_pass_over_sequential"] = out["one_pass"]["ms_per_item"] / out["sequential"]["ms_per_item"]
    return out


def measure_http(model: Path, prompt: str, texts: list[str], threads: int | None, n_ctx: int) -> dict[str, Any]:
    """The gateway pattern: POST /v1/classify with the growing response at each check point,
    against a real `serve` process; tokens evaluated per call read from /metrics."""
    import subprocess
    import urllib.request

    from .traffic import free_port, threads_args

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [
        "serve",
        "--model",
        str(model),
        "--port",
        str(port),
        "--n-ctx",
        str(n_ctx),
        "--workers",
        "1",
        *threads_args(threads),
    ]
    code = f"import sys; from wildguard_lite.cli import main; sys.exit(main({argv!r}))"
    server = subprocess.Popen(python_command("-c", code), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def get(path: str) -> str:
        with urllib.request.urlopen(base + path, timeout=30) as r:
            return r.read().decode()

    def tokens() -> float:
        line = next(x for x in get("/metrics").splitlines() if x.startswith("wildguard_tokens_evaluated_total"))
        return float(line.split()[-1])

    try:
        for _ in range(600):
            try:
                get("/health")
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"serve exited: {server.stderr.read().decode()[-500:]}") from None
                time.sleep(0.2)
        calls = []
        for text in texts:
            before = tokens()
            body = json.dumps({"items": [{"prompt": prompt, "response": text}]}).encode()
            request = urllib.request.Request(base + "/v1/classify", body, {"Content-Type": "application/json"})
            start = time.perf_counter()
            with urllib.request.urlopen(request, timeout=120) as r:
                json.loads(r.read())
            calls.append({"s": time.perf_counter() - start, "tokens": tokens() - before})
    finally:
        server.terminate()
        server.wait(timeout=30)
    steady = calls[1:]
    return {
        "calls": len(calls),
        "first_call_tokens": calls[0]["tokens"],
        "tokens_per_call": statistics.mean(c["tokens"] for c in steady),
        "s_per_call": statistics.mean(c["s"] for c in steady),
        "total_s": sum(c["s"] for c in calls),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="a .gguf file")
    p.add_argument("--rows", type=Path, help="dataset rows (WildGuardTest layout) for the delay and full-exchange runs")
    p.add_argument("--tokens", type=int, default=400, help="response length (default 400)")
    p.add_argument("--interval", type=int, default=DEFAULT_INTERVAL_TOKENS)
    p.add_argument("--delay-items", type=int, default=40)
    p.add_argument("--full-items", type=int, default=40, help="whole exchanges for one-pass vs sequential")
    add_runtime_flags(p, "threads", "n_ctx", n_ctx=N_CTX)
    p.add_argument(
        "--force-answer",
        choices=("yes", "no"),
        help="bias every answer to this word (random-weight stand-ins, which answer neither)",
    )
    p.add_argument("--http", action="store_true", help="also the same check points through a 'serve' process")
    p.add_argument("--out", type=Path, help="write the report as JSON here")


def run(args: argparse.Namespace) -> int:
    import wildguard_lite

    report: dict[str, Any] = {"model": str(args.model), "threads": args.threads}

    def save(stage: str) -> None:
        # After every stage: a long run on a busy machine still leaves what it measured.
        print(f"[{time.strftime('%H:%M:%S')}] {stage} done", file=sys.stderr, flush=True)
        if args.out:
            write_json(args.out, report)

    with wildguard_lite.load(args.model, threads=args.threads, n_ctx=args.n_ctx) as clf:
        rows = []
        if args.rows:
            rows = load_rows(str(args.rows))
        seed = next((r["response"] for r in rows if r.get("response")), "")
        prompt = next((r["prompt"] for r in rows if r.get("response")), "Tell me about the region's history.")
        response = response_of(clf.tokenizer, args.tokens, seed)
        force_id = None if args.force_answer is None else getattr(clf.tokenizer, f"{args.force_answer}_id")
        report["forced_answer"] = args.force_answer
        # The raw prefill runs on a second context of the same file with one sequence: on the
        # stream's own classifier the timed call would land on the stream's sequence (which
        # holds more than the kept prefix) and evaluate one token.
        with wildguard_lite.load(args.model, threads=args.threads, n_ctx=args.n_ctx, slots=1) as raw:
            m = measure_checks(clf, prompt, response, args.interval, force_id=force_id, raw_backend=raw.backend)
        report["checks"] = summarize_checks(m, args.interval)
        report["checks_raw"] = [{k: v for k, v in c.items() if k != "text"} for c in m["checks"]]
        texts = [c["text"] for c in m["checks"]]
        save("checks")
        if rows and args.delay_items:
            report["delay"] = [measure_delay(clf, rows, args.delay_items, args.interval, k) for k in (1, 2)]
            save("delay")
        if args.full_items:
            if rows:
                full_items = [to_item(r) for r in rows[: args.full_items]]
            else:  # synthetic: a prompt alone and a ~400-token exchange
                full_items = [{"prompt": prompt}, {"prompt": prompt, "response": response}] * max(
                    1, args.full_items // 2
                )
            report["full_exchange"] = measure_full(clf, full_items, force_id)
            if force_id is not None:  # the other forced answer: every guess wrong
                other = clf.tokenizer.yes_id if force_id == clf.tokenizer.no_id else clf.tokenizer.no_id
                report["full_exchange_guess_wrong"] = measure_full(clf, full_items, other)
            save("full exchanges")
    if args.http:  # after the in-process model is closed: the server loads its own
        report["http"] = measure_http(args.model, prompt, texts, args.threads, args.n_ctx)
        save("http")
    print(json.dumps({k: v for k, v in report.items() if k != "checks_raw"}, indent=2))
    return 0
