"""Soak test of `wildguard-lite serve` (`wildguard-lite bench soak`).

    wildguard-lite bench soak --model toy-wildguard-q8_0.gguf --minutes 30

Starts the server (a child process on loopback; or `--url` with `--pid` for a running one) and
sends mixed traffic from several clients for N minutes: short moderations, exchanges, LiteLLM
guardrail request checks followed by a streamed reply's growing checks, long inputs (about
`--long-kb` kB), requests the client hangs up on mid-way, and bad requests (malformed JSON,
unknown fields, oversized bodies). Every minute it records the server's RSS, open file
descriptors and threads, and the p50/p99 latency and status counts of that minute's requests.
Memory, descriptors and threads should stay flat: the report compares the last minutes with
minute 10 (or the middle of a shorter run). One JSON object; a line per minute on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

from wildguard_lite.flags import add_runtime_flags

from .traffic import PROMPTS, RESPONSES, ServerProcess, add_report_arguments, percentile, report, threads_args

GUARDRAIL = "/beta/litellm_basic_guardrail_api"
# Traffic kinds and their shares of the requests.
MIX = {
    "short": 0.40,
    "exchange": 0.15,
    "guardrail_stream": 0.12,
    "long": 0.05,
    "hang_up": 0.10,
    "bad": 0.13,
    "health": 0.05,
}
WORDS = "the river runs slowly past the old mill and the baker opens at seven every morning".split()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, help="GGUF to serve (omit with --url)")
    p.add_argument("--url", help="an already running server")
    p.add_argument("--pid", type=int, help="the running server's process id, for RSS, descriptors, threads")
    p.add_argument("--minutes", type=float, default=30, help="how long to send traffic (default 30)")
    p.add_argument("--clients", type=int, default=6, help="concurrent clients (default 6)")
    p.add_argument("--workers", type=int, default=2, help="serve's --workers (default 2)")
    p.add_argument("--long-kb", type=int, default=200, help="size of the long inputs in kB (default 200)")
    p.add_argument("--serve-arg", action="append", default=[], help="one more option for serve (repeatable)")
    add_runtime_flags(p, "threads")
    add_report_arguments(p)


def run(args: argparse.Namespace) -> int:
    from wildguard_lite.errors import InvalidInputError

    if (args.model is None) == (args.url is None):
        raise InvalidInputError("give --model (start a server) or --url (use a running one)")
    if not (0 < args.minutes <= 7 * 24 * 60) or args.clients < 1 or args.long_kb < 1:
        raise InvalidInputError("--minutes must be positive (at most a week), --clients and --long-kb at least 1")
    return report(measure(args), args.json_out)


def proc_stats(pid: int | None) -> dict[str, Any]:
    """RSS (MiB), open descriptors and threads of a process (Linux /proc)."""
    if pid is None:
        return {}
    status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mib": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(fields["Threads"]),
    }


def long_text(rng: random.Random, kb: int) -> str:
    words = [rng.choice(WORDS) for _ in range(kb * 1024 // 5)]
    at = rng.randrange(len(words))
    words.insert(at, rng.choice(PROMPTS))
    return " ".join(words)[: kb * 1024]


async def one_request(http, url: str, kind: str, rng: random.Random, args) -> list[tuple[str, int, float]]:
    """Send one unit of `kind` traffic; returns (kind, status, seconds) per HTTP call (status 0:
    the client hung up or the connection failed)."""
    import httpx

    out: list[tuple[str, int, float]] = []

    async def call(method: str, path: str, timeout: float = 120, **kwargs) -> None:
        start = time.perf_counter()
        try:
            reply = await http.request(method, url + path, timeout=timeout, **kwargs)
            status = reply.status_code
        except httpx.HTTPError:
            status = 0
        out.append((kind, status, time.perf_counter() - start))

    if kind == "short":
        await call("POST", "/v1/moderations", json={"input": rng.choice(PROMPTS)})
    elif kind == "exchange":
        item = {"prompt": rng.choice(PROMPTS), "response": rng.choice(RESPONSES)}
        await call("POST", "/v1/classify", json={"items": [item]})
    elif kind == "guardrail_stream":
        call_id = f"soak-{rng.getrandbits(64):x}"
        prompt = rng.choice(PROMPTS)
        messages = [{"role": "user", "content": prompt}]
        body = {"input_type": "request", "texts": [prompt], "structured_messages": messages, "litellm_call_id": call_id}
        await call("POST", GUARDRAIL, json=body)
        reply = rng.choice(RESPONSES)
        for end in range(8, len(reply) + 8, 16):  # a streamed reply, judged as it grows
            body = {"input_type": "response", "texts": [reply[:end]], "litellm_call_id": call_id}
            await call("POST", GUARDRAIL, json=body)
    elif kind == "long":
        path = rng.choice(["/v1/moderations", GUARDRAIL])
        text = long_text(rng, args.long_kb)
        body = {"input": text} if path != GUARDRAIL else {"input_type": "request", "texts": [text]}
        await call("POST", path, json=body)
    elif kind == "hang_up":  # the client leaves before the answer (a cancel)
        items = [{"prompt": rng.choice(PROMPTS), "response": rng.choice(RESPONSES)} for _ in range(8)]
        await call("POST", "/v1/classify", timeout=rng.uniform(0.005, 0.2), json={"items": items})
    elif kind == "bad":
        bad = rng.choice(["json", "field", "big", "type"])
        if bad == "json":
            await call("POST", "/v1/classify", content=b'{"items": [', headers={"content-type": "application/json"})
        elif bad == "field":
            await call("POST", "/v1/classify", json={"items": [{"prompt": "x", "respones": "y"}]})
        elif bad == "big":
            await call("POST", "/v1/moderations", content=b"x" * (2 << 20))
        else:
            await call("POST", "/v1/moderations", json={"input": [1, 2, 3]})
    else:
        await call("GET", "/health")
    return out


async def traffic(url: str, args, seconds: float, on_minute) -> None:
    import httpx

    records: list[tuple[str, int, float]] = []
    kinds, weights = zip(*MIX.items())
    deadline = time.monotonic() + seconds

    async def client(index: int) -> None:
        rng = random.Random(args.seed * 1000 + index)
        # Each client presents its own key: the server's per-client limits tell them apart.
        async with httpx.AsyncClient(headers={"x-api-key": f"soak-client-{index}"}) as http:
            while time.monotonic() < deadline:
                kind = rng.choices(kinds, weights)[0]
                records.extend(await one_request(http, url, kind, rng, args))

    async def sampler() -> None:
        minute = 0
        start = time.monotonic()
        while True:
            next_at = start + 60 * (minute + 1)
            await asyncio.sleep(max(0.0, min(next_at, deadline) - time.monotonic()))
            minute += 1
            batch, records[:] = list(records), []
            on_minute(minute, batch)
            if time.monotonic() >= deadline:
                return

    await asyncio.gather(sampler(), *(client(i) for i in range(args.clients)))


def summarise(minute: int, batch: list[tuple[str, int, float]], stats: dict[str, Any]) -> dict[str, Any]:
    ok = [seconds for kind, status, seconds in batch if status == 200 and kind in ("short", "exchange")]
    statuses: dict[str, int] = {}
    for _, status, _ in batch:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "minute": minute,
        **stats,
        "requests": len(batch),
        "short_p50_ms": round(percentile(ok, 50) * 1000, 1) if ok else None,
        "short_p99_ms": round(percentile(ok, 99) * 1000, 1) if ok else None,
        "statuses": dict(sorted(statuses.items())),
    }


def flatness(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The last third of the run (at least the last minute) against minute 10, or the run's
    middle when shorter: the largest relative change of RSS, descriptors and threads."""
    if not rows or "rss_mib" not in rows[0]:
        return {}
    base = rows[min(9, len(rows) // 2)]
    tail = rows[len(rows) * 2 // 3 :]
    return {
        "baseline_minute": base["minute"],
        **{
            f"{key}_max_change": round(max(abs(r[key] - base[key]) / max(1, base[key]) for r in tail), 3)
            for key in ("rss_mib", "fds", "threads")
        },
    }


def measure(args) -> dict[str, Any]:
    server = None
    url, pid = args.url, args.pid
    if url is None:
        options = ["--model", str(args.model), "--workers", str(args.workers), *threads_args(args.threads)]
        server = ServerProcess([*options, *args.serve_arg])
        url, pid = server.url, server.proc.pid
        # The server logs to its stderr; read it so a full pipe never blocks it.
        threading.Thread(target=lambda: [None for _ in server.proc.stderr], daemon=True).start()
    rows: list[dict[str, Any]] = []

    def on_minute(minute: int, batch) -> None:
        rows.append(summarise(minute, batch, proc_stats(pid)))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    try:
        start_stats = proc_stats(pid)
        started = time.monotonic()
        asyncio.run(traffic(url, args, args.minutes * 60, on_minute))
        elapsed = time.monotonic() - started
    finally:
        if server is not None:
            server.proc.terminate()
            server.proc.wait(60)
    return {
        "benchmark": "soak",
        "url": url,
        "minutes": round(elapsed / 60, 2),
        "clients": args.clients,
        "mix": MIX,
        "long_kb": args.long_kb,
        "load_average": os.getloadavg(),
        "start": start_stats,
        "per_minute": rows,
        "flatness": flatness(rows),
    }
