"""`serve --ray` against one `serve` box (`wildguard-lite bench fleet`).

    wildguard-lite bench fleet --model toy-wildguard-q8_0.gguf --out fleet.json

Starts a real Ray cluster here (`--cpus`, 2 by default), then `serve` child processes:
- conversations: `--conversations` streamed conversations at once, half LiteLLM-shaped
  guardrail calls (a request check, then response checks of the growing answer under one
  `litellm_call_id`), half plain `/v1/moderations` re-checks of the growing answer (no id: the
  key is derived from the prompt). Tokens evaluated per call (from `/metrics`) on
  `--ray --replicas 2 --threads 1`, against one `serve --threads 2`, and with `--affinity off`;
- independent requests (distinct prompts, 4 at a time): throughput of 2 replicas x 1 thread
  against 1 replica x 1 thread;
- the front's overhead: p50 latency of one small request, sent one at a time, through
  `--ray --replicas 1 --threads 1` against a direct `serve --threads 1`;
- a replica killed (`ray.kill` of its actor) while the conversations run (`/v1/classify`):
  failed requests, and every verdict against one-shot `classify` (labels, P within 0.02).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from wildguard_lite.contract import LABEL_KEYS

from .concurrent_streams import texts_for
from .data import write_json
from .http_streams import Server
from .traffic import PROMPTS, percentile

WAIT_S = 600.0  # Ray and the replicas start in a minute or two on a busy machine
LABELS = LABEL_KEYS


def conversations(model: Path, n: int, tokens: int) -> list[tuple[str, list[str]]]:
    import wildguard_lite

    with wildguard_lite.load(model, slots=1) as clf:  # texts cut at token boundaries
        chats = texts_for(clf, n, tokens, seed=n)
    return [(prompt, ["".join(chunks[: k + 1]) for k in range(len(chunks))]) for prompt, chunks in chats]


def call(server: Server, i: int, k: int, prompt: str, answer: str) -> None:
    """Call k of conversation i: even conversations speak LiteLLM's guardrail API, odd ones
    /v1/moderations."""
    if i % 2 == 0:
        cid = f"call-{i}"
        if k == 0:
            server.post(
                "/beta/litellm_basic_guardrail_api",
                {
                    "input_type": "request",
                    "texts": [prompt],
                    "structured_messages": [{"role": "user", "content": prompt}],
                    "litellm_call_id": cid,
                },
            )
        server.post(
            "/beta/litellm_basic_guardrail_api", {"input_type": "response", "texts": [answer], "litellm_call_id": cid}
        )
    else:
        server.post("/v1/moderations", {"input": [{"prompt": prompt, "response": answer}]})


def streamed(server: Server, chats: list[tuple[str, list[str]]]) -> dict[str, Any]:
    """All conversations advance one round at a time, their calls sent at once."""
    rounds = min(len(g) for _, g in chats)
    per_call = []
    for k in range(rounds):
        before = server.metric("wildguard_tokens_evaluated_total")
        calls = len(chats) + sum(1 for i in range(len(chats)) if i % 2 == 0 and k == 0)
        with concurrent.futures.ThreadPoolExecutor(len(chats)) as pool:
            list(pool.map(lambda i, k=k: call(server, i, k, chats[i][0], chats[i][1][k]), range(len(chats))))
        per_call.append((server.metric("wildguard_tokens_evaluated_total") - before) / calls)
    return {"first_round": round(per_call[0], 1), "tokens_per_call": round(statistics.mean(per_call[1:]), 1)}


def throughput(server: Server, requests: int, seed: int) -> float:
    texts = [f"{PROMPTS[i % len(PROMPTS)]} (request {seed}-{i})" for i in range(requests)]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda t: server.post("/v1/moderations", {"input": t}), texts))
    seconds = time.perf_counter() - start
    judged(replies)
    return requests / seconds


def judged(replies: list[dict[str, Any]]) -> None:
    """A figure counts judged answers only: one flagged unjudged (server/budget.py) is refused."""
    unjudged = [r for reply in replies for r in reply["results"] if "not_judged" in r.get("wildguard", {})]
    if unjudged:
        raise SystemExit(f"{len(unjudged)} answers were not judged ({unjudged[0]['wildguard']['not_judged']})")


def latencies(server: Server, calls: int) -> list[float]:
    body = {"input": PROMPTS[0]}
    server.post("/v1/moderations", body)  # its KV stays: later calls evaluate the answers only
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        reply = server.post("/v1/moderations", body)
        out.append(time.perf_counter() - start)
        judged([reply])
    return out


def killed(server: Server, chats, model: Path) -> dict[str, Any]:
    """The conversations through /v1/classify; one replica killed after every conversation's
    second call; then every verdict against one-shot classify."""
    import ray
    from ray.util import list_named_actors

    import wildguard_lite

    rounds = min(len(g) for _, g in chats)
    failures: list[str] = []
    replies: dict[tuple[int, int], dict] = {}
    second = threading.Barrier(len(chats) + 1)

    def talk(i: int) -> None:
        for k in range(rounds):
            if k == 2:
                second.wait()
            try:
                item = {"prompt": chats[i][0], "response": chats[i][1][k]}
                replies[(i, k)] = server.post("/v1/classify", {"items": [item]})["results"][0]
            except Exception as exc:  # counted: the target is none
                failures.append(f"conversation {i} call {k}: {exc}")

    with concurrent.futures.ThreadPoolExecutor(len(chats)) as pool:
        done = [pool.submit(talk, i) for i in range(len(chats))]
        second.wait()
        names = [a["name"] for a in list_named_actors(all_namespaces=True) if a["name"].startswith("SERVE_REPLICA::")]
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
        for future in done:
            future.result()
    resent = server.metric("wildguard_fleet_resent_total")
    differ = []
    with wildguard_lite.load(model, threads=1) as clf:
        for (i, k), got in sorted(replies.items()):
            want = clf.classify([{"prompt": chats[i][0], "response": chats[i][1][k]}])[0]
            labels = [got[x] for x in LABELS] == [want[x] for x in LABELS]
            close = all(
                (got["scores"][x] is None) == (want["scores"][x] is None)
                and (got["scores"][x] is None or abs(got["scores"][x] - want["scores"][x]) < 0.02)
                for x in LABELS
            )
            if not (labels and close):
                differ.append({"conversation": i, "call": k, "fleet": got["scores"], "one_shot": want["scores"]})
    return {
        "requests": len(chats) * rounds,
        "failed": len(failures),
        "failures": failures[:5],
        "resent_after_the_kill": resent,
        "verdicts_differing_from_one_shot": len(differ),
        "differences": differ[:5],
    }


def fleet_args(model: Path, address: str, replicas: int, n: int, affinity: str = "on") -> list[str]:
    return ["--model", str(model), "--ray", address, "--replicas", str(replicas), "--threads", "1"] + [
        "--workers",
        str(n),
        "--slots",
        str(n),
        "--affinity",
        affinity,
        "--timeout",
        "900",  # a busy machine: a slow call is measured, not refused
    ]


def start_ray(cpus: int, tries: int = 3) -> None:
    """A local Ray instance; Ray gives its raylet 30 s to register, which a busy machine can miss."""
    import ray

    # Ray 2.60 authenticates with the token in ~/.ray/auth_token, which every local Ray start
    # rewrites: another run on this machine would lock the `serve` children out of this
    # short-lived benchmark cluster, so it runs without (the children inherit the setting).
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    for attempt in range(tries):
        try:
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
            return
        except Exception as exc:
            ray.shutdown()
            if attempt + 1 == tries:
                raise
            print(f"Ray did not start ({exc}); trying again", flush=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="a GGUF (the toy's q8_0, or the 4-layer stand-in)")
    p.add_argument("--conversations", type=int, default=8)
    p.add_argument("--tokens", type=int, default=160, help="answer length per conversation")
    p.add_argument("--requests", type=int, default=32, help="independent requests per throughput run")
    p.add_argument("--calls", type=int, default=40, help="sequential calls per overhead run")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the Ray cluster started here")
    p.add_argument("--out", type=Path)


def run(args: argparse.Namespace) -> int:
    import ray

    n = args.conversations
    chats = conversations(args.model, n, args.tokens)
    start_ray(args.cpus)
    address = ray.get_runtime_context().gcs_address
    one_box = ["--model", str(args.model), "--workers", str(n), "--slots", str(n), "--timeout", "900"]
    report: dict[str, Any] = {"model": str(args.model), "cpus": args.cpus, "load_before": os.getloadavg()}
    try:
        server = Server(wait_s=WAIT_S, argv=[*one_box, "--threads", "2"])
        try:
            report["one_serve_threads_2"] = streamed(server, chats)
        finally:
            server.close()
        for affinity in ("on", "off"):
            server = Server(wait_s=WAIT_S, argv=fleet_args(args.model, address, 2, n, affinity))
            try:
                report[f"ray_2x1_affinity_{affinity}"] = streamed(server, chats)
                if affinity == "on":
                    report["throughput_2x1_rps"] = round(throughput(server, args.requests, 1), 2)
            finally:
                server.close()
        server = Server(wait_s=WAIT_S, argv=fleet_args(args.model, address, 1, n))
        try:
            report["throughput_1x1_rps"] = round(throughput(server, args.requests, 2), 2)
            fleet_ms = latencies(server, args.calls)
        finally:
            server.close()
        server = Server(wait_s=WAIT_S, argv=[*one_box, "--threads", "1"])
        try:
            direct_ms = latencies(server, args.calls)
        finally:
            server.close()
        server = Server(wait_s=WAIT_S, argv=fleet_args(args.model, address, 2, n))
        try:
            report["replica_killed"] = killed(server, chats, args.model)
        finally:
            server.close()
    finally:
        ray.shutdown()
    base = report["one_serve_threads_2"]["tokens_per_call"]
    report["tokens_per_call_ratio_affinity_on"] = round(report["ray_2x1_affinity_on"]["tokens_per_call"] / base, 3)
    report["tokens_per_call_ratio_affinity_off"] = round(report["ray_2x1_affinity_off"]["tokens_per_call"] / base, 3)
    report["throughput_ratio_2_vs_1"] = round(report["throughput_2x1_rps"] / report["throughput_1x1_rps"], 2)
    report["p50_ms_direct"] = round(1000 * percentile(direct_ms, 50), 2)
    report["p50_ms_ray_front"] = round(1000 * percentile(fleet_ms, 50), 2)
    report["front_overhead_p50_ms"] = round(report["p50_ms_ray_front"] - report["p50_ms_direct"], 2)
    report["load_after"] = os.getloadavg()
    if args.out:
        write_json(args.out, report)
    print(json.dumps(report, indent=2))
    return 0
