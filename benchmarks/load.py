"""Load test of `wildguard-lite serve` (`wildguard-lite bench load`).

    wildguard-lite bench load --model toy-wildguard-q8_0.gguf --workers 2 --clients 8 --seconds 60

Starts the server (a child process on loopback; or `--url` for a running one), runs N
concurrent asyncio clients for T seconds (each waits for its answer before sending the next
request, so the run stops by itself), and reports throughput, p50/p95/p99 latency, status-code
counts and the server's RSS before and after, as one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import time
from pathlib import Path
from typing import Any

from wildguard_lite.flags import add_runtime_flags

from .traffic import (
    PROMPTS,
    RESPONSES,
    ServerProcess,
    add_report_arguments,
    percentile,
    report,
    rss_bytes,
    threads_args,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, help="GGUF to serve (omit with --url)")
    p.add_argument("--url", help="an already running server (RSS needs --pid)")
    p.add_argument("--pid", type=int, help="the running server's process id, for RSS")
    p.add_argument("--workers", type=int, default=2, help="serve's --workers (default 2)")
    p.add_argument("--max-queue", type=int, default=16, help="serve's --max-queue (default 16)")
    p.add_argument("--clients", type=int, help="concurrent clients (default 4 x workers)")
    p.add_argument("--seconds", type=float, default=60, help="how long the clients send (default 60)")
    add_runtime_flags(p, "threads")
    add_report_arguments(p)


def run(args: argparse.Namespace) -> int:
    if (args.model is None) == (args.url is None):
        from wildguard_lite.errors import InvalidInputError

        raise InvalidInputError("give --model (start a server) or --url (use a running one)")
    args.clients = args.clients or 4 * args.workers
    return report(measure(args), args.json_out)


def request_body(rng: random.Random) -> dict[str, Any]:
    """A request body: a prompt-only moderation (as a gateway's pre-check) or an exchange."""
    prompt = rng.choice(PROMPTS)
    if rng.random() < 0.5:
        return {"input": prompt}
    return {"input": [{"prompt": prompt, "response": rng.choice(RESPONSES)}]}


async def _client(http, url: str, deadline: float, rng: random.Random, record) -> None:
    while time.perf_counter() < deadline:
        body = request_body(rng)
        start = time.perf_counter()
        try:
            reply = await http.post(f"{url}/v1/moderations", json=body)
            status = reply.status_code
            if status == 429:  # honour Retry-After, as a well-behaved gateway would (capped)
                record(status, time.perf_counter() - start)
                await asyncio.sleep(min(float(reply.headers.get("retry-after", 1)), 0.5))
                continue
        except Exception as exc:  # a connection error is a result too
            status = type(exc).__name__
        record(status, time.perf_counter() - start)


async def _run_load(url: str, clients: int, seconds: float, seed: int) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    statuses: dict[str, int] = {}

    def record(status, seconds_taken):
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if status == 200:
            latencies.append(seconds_taken)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(*(_client(http, url, deadline, random.Random(seed + i), record) for i in range(clients)))
        elapsed = time.perf_counter() - start
    ok = statuses.get("200", 0)
    return {
        "seconds": round(elapsed, 2),
        "requests": sum(statuses.values()),
        "ok_per_s": round(ok / elapsed, 1),
        "latency_ms": {f"p{q}": round(percentile(latencies, q) * 1000, 1) for q in (50, 95, 99)},
        "status_counts": dict(sorted(statuses.items())),
    }


def measure(args) -> dict[str, Any]:
    import httpx

    server = None
    url, pid = args.url, args.pid
    if url is None:
        server = ServerProcess(
            [
                "--model",
                str(args.model),
                "--workers",
                str(args.workers),
                "--max-queue",
                str(args.max_queue),
                *threads_args(args.threads),
            ]
        )
        url, pid = server.url, server.proc.pid
    try:
        # Warm up (loads pages, fills the prefix cache with the constant instruction prefix).
        asyncio.run(_run_load(url, args.workers, 3, seed=10_000))
        rss_before = rss_bytes(pid) if pid else None
        result = asyncio.run(_run_load(url, args.clients, args.seconds, seed=args.seed))
        rss_after = rss_bytes(pid) if pid else None
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        if server is not None:
            server.stop()
    cache = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^wildguard_prefix_cache_(\w+?)(?:_total)? (\S+)$", metrics, re.M)
    }
    result.update(
        model=str(args.model),
        workers=args.workers,
        clients=args.clients,
        max_queue=args.max_queue,
        cpu_cores=os.cpu_count(),
        rss_mb={
            "before": rss_before and round(rss_before / 2**20, 1),
            "after": rss_after and round(rss_after / 2**20, 1),
            "growth_pct": rss_before and round(100 * (rss_after - rss_before) / rss_before, 2),
        },
        five_xx=sum(n for s, n in result["status_counts"].items() if s.startswith("5")),
        prefix_cache=cache,
    )
    return result
