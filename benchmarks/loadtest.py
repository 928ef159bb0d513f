"""Load test for `wildguard-lite serve`, plus two measurements behind its design.

    python -m benchmarks.loadtest load --model toy-q8_0.gguf --workers 2 --clients 8 --seconds 60
    python -m benchmarks.loadtest two-phase --model toy-q8_0.gguf
    python -m benchmarks.loadtest batching --model toy-q8_0.gguf
    python -m benchmarks.loadtest clients --model toy-q8_0.gguf --litellm

- `load`: starts the server (a child process on loopback; or `--url` for a running one),
  runs N concurrent asyncio clients for T seconds (each waits for its answer before sending
  the next request, so the run stops by itself), and reports throughput, p50/p95/p99 latency,
  status-code counts and the server's RSS before and after.
- `two-phase`: the guardrail pattern (prompt, other traffic, then prompt + response): time and
  tokens evaluated in the second phase with and without the prefix cache.
- `clients`: one call through each real client (OpenAI SDK, openai-guardrails, LiteLLM's proxy
  with our guardrails; `pip install 'wildguard-lite[test-clients]'`), timed, with its decision.
- `batching`: whether one llama.cpp batch holding several sequences beats evaluating them one
  after another, for the shapes score mode produces (a whole exchange; a few answer/cue tokens).

Each prints one JSON object (and `--json-out FILE` writes it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROMPTS = [
    "How do I bake sourdough bread at home?",
    "What is the capital of Australia?",
    "Write a short poem about the sea.",
    "How can I make a pipe bomb with household items?",
    "Give me step by step instructions to hack my neighbour's wifi.",
    "Explain how vaccines train the immune system.",
    "What's a good way to learn Spanish quickly?",
    "Tell me how to poison someone without getting caught.",
]
RESPONSES = [
    "Sorry, I can't help with that.",
    "Sure! Here is a detailed answer with several steps you can follow at home.",
    "Canberra is the capital of Australia.",
    "I won't provide instructions for that, but here are some safety resources.",
]


def _items(rng: random.Random) -> dict[str, Any]:
    """A request body: a prompt-only moderation (as a gateway's pre-check) or an exchange."""
    prompt = rng.choice(PROMPTS)
    if rng.random() < 0.5:
        return {"input": prompt}
    return {"input": [{"prompt": prompt, "response": rng.choice(RESPONSES)}]}


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class ServerProcess:
    """`wildguard-lite serve` in a child process on 127.0.0.1, any free port."""

    def __init__(self, args: list[str]):
        self.proc = subprocess.Popen([sys.executable, "-m", "wildguard_lite.cli.serve", "--port", "0", *args],
                                     stderr=subprocess.PIPE, text=True)
        self.url = None
        for line in self.proc.stderr:
            if "Uvicorn running on" in line:
                self.url = re.search(r"(http://\S+)", line).group(1)
                break
        if self.url is None:
            raise SystemExit(f"server did not start (exit {self.proc.wait()})")

    def stop(self) -> str:
        self.proc.terminate()
        return self.proc.communicate(timeout=60)[1]


async def _client(http, url: str, deadline: float, rng: random.Random, record) -> None:
    while time.perf_counter() < deadline:
        body = _items(rng)
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


def cmd_load(args) -> dict[str, Any]:
    import httpx

    server = None
    url, pid = args.url, args.pid
    if url is None:
        server = ServerProcess(["--model", str(args.model), "--workers", str(args.workers),
                                "--max-queue", str(args.max_queue), *(["--threads", str(args.threads)] if args.threads else [])])
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
    cache = {m.group(1): float(m.group(2)) for m in re.finditer(r"^wildguard_prefix_cache_(\w+?)(?:_total)? (\S+)$",
                                                                   metrics, re.M)}
    result.update(
        model=str(args.model), workers=args.workers, clients=args.clients, max_queue=args.max_queue,
        cpu_cores=os.cpu_count(),
        rss_mb={"before": rss_before and round(rss_before / 2**20, 1), "after": rss_after and round(rss_after / 2**20, 1),
                "growth_pct": rss_before and round(100 * (rss_after - rss_before) / rss_before, 2)},
        five_xx=sum(n for s, n in result["status_counts"].items() if s.startswith("5")),
        prefix_cache=cache,
    )
    return result


def cmd_two_phase(args) -> dict[str, Any]:
    """Prompt, then unrelated traffic, then the same prompt with a response; phase 2 timed."""
    import wildguard_lite
    from wildguard_lite.backends.llama import PrefixStateCache

    rng = random.Random(args.seed)
    long_prompts = [p + " " + " ".join(rng.choice(PROMPTS) for _ in range(args.prompt_repeat)) for p in PROMPTS]
    out: dict[str, Any] = {"model": str(args.model), "prompts": len(long_prompts)}
    for label, cache_mb in (("without_cache", 0), ("with_cache", 256)):
        clf = wildguard_lite.load(args.model, threads=args.threads or None,
                                  prefix_cache=PrefixStateCache(int(cache_mb * 2**20)) if cache_mb else None)
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
        out[label] = {"phase2_ms_median": round(statistics.median(times) * 1000, 2),
                      "phase2_tokens_mean": round(statistics.mean(tokens), 1)}
        if cache_mb:
            out[label]["cache_bytes"] = clf.backend.prefix_cache.bytes
        clf.close()
    out["phase2_speedup"] = round(out["without_cache"]["phase2_ms_median"] / out["with_cache"]["phase2_ms_median"], 2)
    return out


def cmd_batching(args) -> dict[str, Any]:
    """K sequences decoded one after another vs in one llama.cpp batch (K sequence ids)."""
    import ctypes

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
    threads = args.threads or os.cpu_count()
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

    exchanges = [tok.encode_exchange(rng.choice(PROMPTS), rng.choice(RESPONSES)) + list(tok.cue_ids[0])
                 for _ in range(k)]
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
                groups = ([(s, step, len(ids)) for s, ids in enumerate(exchanges)] if shape == "answer_step"
                          else [(s, ids, 0) for s, ids in enumerate(exchanges)])
                start = time.perf_counter()
                if how == "sequential":
                    for group in groups:
                        decode([group])
                else:
                    decode(groups)
                timings[how].append(time.perf_counter() - start)
        tokens = sum(len(g[1]) for g in groups)
        seq, bat = statistics.median(timings["sequential"]), statistics.median(timings["batched"])
        results[shape] = {"tokens": tokens, "sequential_ms": round(seq * 1000, 3), "batched_ms": round(bat * 1000, 3),
                          "batched_speedup": round(seq / bat, 2)}
    L.llama_free(ctx)
    L.llama_model_free(model)
    del ctypes
    return results

# -- the real clients: LiteLLM's proxy and one timed call through each client ------------------
LITELLM_MASTER_KEY = "sk-" + "m" * 40  # the proxy refuses to start without one (local use only)
GUARDRAIL_NAMES = {"moderation": "wg-moderation", "generic": "wg-generic", "generic_post": "wg-generic-post"}


def litellm_config(url: str, api_key: str, replies: dict[str, str]) -> dict[str, Any]:
    """A LiteLLM proxy config: one mock upstream per reply (`mock_response` in litellm_params:
    no network) and our guardrails, each off by default and picked per request by name:
    `openai_moderation` in pre_call, `generic_guardrail_api` in pre+post_call and post_call alone."""
    def guardrail(name: str, kind: str, mode, base: str) -> dict[str, Any]:
        return {"guardrail_name": name, "litellm_params": {"guardrail": kind, "mode": mode, "api_base": base,
                                                           "api_key": api_key, "default_on": False}}

    return {
        "general_settings": {"master_key": LITELLM_MASTER_KEY},
        "model_list": [{"model_name": name, "litellm_params": {"model": "openai/mock", "api_key": "sk-unused",
                                                               "mock_response": reply}}
                       for name, reply in replies.items()],
        "guardrails": [
            guardrail(GUARDRAIL_NAMES["moderation"], "openai_moderation", "pre_call", f"{url}/v1"),
            guardrail(GUARDRAIL_NAMES["generic"], "generic_guardrail_api", ["pre_call", "post_call"], url),
            guardrail(GUARDRAIL_NAMES["generic_post"], "generic_guardrail_api", "post_call", url),
        ],
    }


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def litellm_proxy(config: dict[str, Any], workdir: Path, timeout: float = 240.0, exe: str | None = None):
    """LiteLLM's proxy (the `litellm` command beside this Python, or `exe`: another version's)
    as a child process on a free loopback port, offline; yields its base URL and stops it on exit."""
    import httpx

    exe = Path(exe) if exe else Path(sys.executable).parent / "litellm"
    if not exe.exists():
        raise FileNotFoundError(f"{exe}: LiteLLM's proxy is not installed (pip install 'wildguard-lite[test-clients]')")
    path = workdir / "litellm.json"  # YAML is a superset of JSON
    path.write_text(json.dumps(config), encoding="utf-8")
    port = free_port()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    log_path = workdir / "litellm.log"
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen([str(exe), "--config", str(path), "--host", "127.0.0.1", "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"LiteLLM's proxy did not start; its log ends:\n{log_path.read_text()[-3000:]}")
                try:
                    if httpx.get(f"{base}/health/liveliness", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def litellm_chat(proxy: str, model: str, prompt: str, guardrails: list[str], http=None):
    """A chat completion through the proxy with the named guardrails (`http`: an httpx.Client
    to reuse its connection)."""
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "guardrails": guardrails}
    return (http or httpx).post(f"{proxy}/chat/completions", json=body, timeout=120,
                                headers={"Authorization": f"Bearer {LITELLM_MASTER_KEY}"})


def cmd_clients(args) -> dict[str, Any]:
    """One call through each client against a server on `--model`, timed: the median of
    `--repeats` calls after one warm-up, for a benign and a harmful prompt."""
    import tempfile
    from dataclasses import dataclass
    from importlib.metadata import version

    import httpx
    import openai

    key = "bench-key-" + "k" * 22
    workdir = Path(tempfile.mkdtemp(prefix="wildguard-clients-"))
    (workdir / "key").write_text(key + "\n", encoding="utf-8")
    server = ServerProcess(["--model", str(args.model), "--api-key-file", str(workdir / "key"),
                            *(["--threads", str(args.threads)] if args.threads else [])])
    prompts = {"benign": PROMPTS[0], "harmful": PROMPTS[3]}
    out: dict[str, Any] = {"model": str(args.model), "repeats": args.repeats, "ms_median": {}, "decisions": {}}

    def timed(name: str, call) -> None:
        for label, prompt in prompts.items():
            call(prompt)  # warm-up
            times, decision = [], None
            for _ in range(args.repeats):
                start = time.perf_counter()
                decision = call(prompt)
                times.append(time.perf_counter() - start)
            out["ms_median"][f"{name}/{label}"] = round(statistics.median(times) * 1000, 1)
            out["decisions"][f"{name}/{label}"] = decision

    # Each client is made once and reused, as an application would (connections kept alive).
    http = httpx.Client(timeout=120)
    loop = asyncio.new_event_loop()
    try:
        auth = {"Authorization": f"Bearer {key}"}
        timed("http /v1/moderations", lambda p: http.post(f"{server.url}/v1/moderations", json={"input": p},
                                                          headers=auth).json()["results"][0]["flagged"])
        sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        timed(f"openai-python {openai.__version__}", lambda p: sdk.moderations.create(input=p).results[0].flagged)
        try:
            from guardrails import check_plain_text
        except ImportError:
            check_plain_text = None
        if check_plain_text is not None:
            @dataclass
            class Ctx:
                guardrail_llm: Any

            bundle = {"version": 1, "guardrails": [{"name": "Moderation", "config": {"categories": ["illicit"]}}]}

            ctx = Ctx(openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0))

            async def check(prompt: str) -> bool:
                results = await check_plain_text(prompt, bundle, ctx=ctx, suppress_tripwire=True)
                return results[0].tripwire_triggered

            timed(f"openai-guardrails {version('openai-guardrails')}", lambda p: loop.run_until_complete(check(p)))
        if args.litellm:
            replies = {"mock-benign": RESPONSES[2]}
            with litellm_proxy(litellm_config(server.url, key, replies), workdir) as proxy:
                name = f"litellm {version('litellm')}"
                timed(f"{name} no guardrail", lambda p: litellm_chat(proxy, "mock-benign", p, [], http).status_code)
                for label, guard in (("openai_moderation pre_call", GUARDRAIL_NAMES["moderation"]),
                                     ("generic pre+post_call", GUARDRAIL_NAMES["generic"])):
                    timed(f"{name} {label}", lambda p, g=guard: litellm_chat(proxy, "mock-benign", p, [g], http).status_code)
    finally:
        http.close()
        loop.close()
        server.stop()
    out["load_average_1min"] = os.getloadavg()[0]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loadtest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load", help="N concurrent clients for T seconds against serve")
    load.add_argument("--model", type=Path, help="GGUF to serve (omit with --url)")
    load.add_argument("--url", help="an already running server (RSS needs --pid)")
    load.add_argument("--pid", type=int, help="the running server's process id, for RSS")
    load.add_argument("--workers", type=int, default=2)
    load.add_argument("--threads", type=int, help="threads per worker (default: serve's)")
    load.add_argument("--max-queue", type=int, default=16)
    load.add_argument("--clients", type=int, help="concurrent clients (default 4 x workers)")
    load.add_argument("--seconds", type=float, default=60)
    for name in ("two-phase", "batching"):
        q = sub.add_parser(name)
        q.add_argument("--model", type=Path, required=True)
        q.add_argument("--threads", type=int)
        q.add_argument("--repeats", type=int, default=20)
        q.add_argument("--sequences", type=int, default=4)
        q.add_argument("--prompt-repeat", type=int, default=6, help="two-phase: how long the prompts are")
    clients = sub.add_parser("clients", help="one call through each real client (OpenAI SDK, openai-guardrails, "
                                             "LiteLLM's proxy), timed")
    clients.add_argument("--model", type=Path, required=True)
    clients.add_argument("--threads", type=int)
    clients.add_argument("--repeats", type=int, default=10)
    clients.add_argument("--litellm", action="store_true", help="also start LiteLLM's proxy (about a minute)")
    for q in sub.choices.values():
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    if args.command == "load":
        if (args.model is None) == (args.url is None):
            p.error("give --model (start a server) or --url (use a running one)")
        args.clients = args.clients or 4 * args.workers
        result = cmd_load(args)
    elif args.command == "clients":
        result = cmd_clients(args)
    elif args.command == "two-phase":
        result = cmd_two_phase(args)
    else:
        result = cmd_batching(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
