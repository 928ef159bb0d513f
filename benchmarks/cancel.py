"""Cancellation, deadlines and the event loop (`python -m wildguard_lite.benchmarks.cancel`).

    python -m wildguard_lite.benchmarks.cancel --model standin-q4_k_m.gguf --out cancel.json

Four measurements on one model file (the issue's targets, on the 4-layer stand-in):
  cancel      a classify of a ~`--long-tokens` exchange cancelled `--cancel-after` s after it
              starts, `--tries` times, sync (cancel event) and async (task.cancel()): the time
              from the cancel to control back, then whether the next call's logits and
              verdicts equal a freshly loaded classifier's (target: control back <= 100 ms);
  heartbeat   a 10 ms ticker task's worst gap while `aclassify` runs the long exchange, at
              `--threads` engine threads and at one fewer (target: <= 50 ms);
  concurrent  `--concurrent` aclassify calls awaited together vs the same calls one after
              another: results equal, time ratio (target: <= 1.1x);
  server      `serve` with `--clients` clients that each send a ~`--server-seconds` request and
              disconnect after 100 ms, then one normal request: how long after it was sent its
              classification starts, with the abort on and off (target: <= 200 ms).
Random-weight stand-ins answer neither yes nor no: each answer is restricted to yes/no (the same
bias on both, so P(yes) stays the model's), making every check do a real check's engine work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .data import write_json
from wildguard_lite.contract import LABEL_KEYS
from wildguard_lite.defaults import default_threads
from wildguard_lite.errors import InvalidInputError
from wildguard_lite.flags import add_runtime_flags

from .streaming import response_of

PARTS = ("cancel", "heartbeat", "concurrent", "server")


class YesNoOnly:
    """Add the same large bias to the yes and no logits of every row the engine returns: the
    answer is the model's choice between the two, its P(yes) unchanged."""

    def __init__(self, clf):
        backend, tok = clf.backend, clf.tokenizer
        logits_at = backend.logits_at

        def biased(ids, positions, *args, **kw):  # the engine's signature (interrupt included)
            out = logits_at(ids, positions, *args, **kw)
            for row in out:
                row[tok.yes_id] += 1e4
                row[tok.no_id] += 1e4
            return out

        backend.logits_at = biased


def exchange(clf, tokens: int, tag: str) -> dict[str, str]:
    return {
        "prompt": f"Tell me about the river towns ({tag}).",
        "response": response_of(clf.tokenizer, tokens, f"{tag}: "),
    }


def summary(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    pick = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
    return {
        "n": len(ms),
        "min_ms": round(ms[0], 1),
        "median_ms": round(statistics.median(ms), 1),
        "p90_ms": round(pick(0.9), 1),
        "max_ms": round(ms[-1], 1),
    }


def same_results(a: list[dict], b: list[dict], tol: float = 0.05) -> dict[str, Any]:
    """Labels differing (a label whose P(yes) is within `tol` of 0.5 may flip) and the largest
    P(yes) difference."""
    differ, near, worst = 0, 0, 0.0
    for x, y in zip(a, b):
        for key in LABEL_KEYS:
            sx, sy = x["scores"].get(key), y["scores"].get(key)
            if sx is not None and sy is not None:
                worst = max(worst, abs(sx - sy))
            if x[key] != y[key]:
                if any(s is not None and abs(s - 0.5) < tol for s in (sx, sy)):
                    near += 1
                else:
                    differ += 1
    return {"labels_differing": differ, "labels_differing_near_half": near, "max_abs_dp_yes": round(worst, 5)}


# -- cancel ----------------------------------------------------------------------------------------
def cancel_sync(clf, item, after: float) -> float:
    """Seconds from setting the cancel event to classify raising."""
    from wildguard_lite.errors import ClassificationCancelled

    cancel, back = threading.Event(), []

    def run():
        try:
            clf.classify([item], cancel=cancel)
            back.append(None)
        except ClassificationCancelled:
            back.append(time.perf_counter())

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(after)
    t0 = time.perf_counter()
    cancel.set()
    thread.join()
    if back[0] is None:
        raise RuntimeError("the call finished before the cancel: use a longer --long-tokens")
    return back[0] - t0


def cancel_async(clf, item, after: float) -> float:
    """Seconds from task.cancel() to `await task` raising CancelledError."""

    async def main():
        task = asyncio.ensure_future(clf.aclassify([item]))
        await asyncio.sleep(after)
        if task.done():
            raise RuntimeError("the call finished before the cancel: use a longer --long-tokens")
        t0 = time.perf_counter()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return time.perf_counter() - t0
        raise RuntimeError("the task was not cancelled")

    return asyncio.run(main())


def part_cancel(clf, args, load) -> dict[str, Any]:
    long_item = exchange(clf, args.long_tokens, "long")
    short = [exchange(clf, 120, f"short {i}") for i in range(3)]
    n_tokens = len(clf.encode(long_item)[0])
    stats = clf.backend.stats
    out: dict[str, Any] = {"exchange_tokens": n_tokens, "cancel_after_s": args.cancel_after}
    for name, fn in (("sync", cancel_sync), ("async", cancel_async)):
        aborted0, latencies = stats.aborted, []
        for _ in range(args.tries):
            clf.backend.reset()
            latencies.append(fn(clf, long_item, args.cancel_after))
        out[name] = {
            **summary(latencies),
            "within_100ms": sum(v <= 0.1 for v in latencies),
            "engine_rounds_aborted": stats.aborted - aborted0,
        }
    # The next call on the used classifier against a freshly loaded one: verdicts, then the
    # logits of one exchange evaluated from scratch on each.
    ids = clf.encode(short[0])[0]

    def next_call(c):
        results = c.classify(short)
        c.backend.reset()
        return results, c.backend.logits_at(ids, [len(ids) - 1])[0]

    got, used = next_call(clf)
    with load() as fresh:
        YesNoOnly(fresh)
        want, clean = next_call(fresh)
    out["next_call_vs_fresh"] = {**same_results(got, want), "max_abs_logit_diff": float(abs(used - clean).max())}
    return out


# -- heartbeat -------------------------------------------------------------------------------------
def heartbeat(clf, item, period: float = 0.01) -> dict[str, Any]:
    async def main():
        gaps, done = [], asyncio.Event()

        async def ticker():
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(period)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.ensure_future(ticker())
        await asyncio.sleep(0.05)
        start = time.perf_counter()
        await clf.aclassify([item])
        seconds = time.perf_counter() - start
        done.set()
        await tick
        return gaps, seconds

    clf.backend.reset()
    gaps, seconds = asyncio.run(main())
    return {
        "aclassify_s": round(seconds, 2),
        "ticks": len(gaps),
        "worst_gap_ms": round(max(gaps) * 1000, 1),
        "p99_gap_ms": round(sorted(gaps)[int(0.99 * (len(gaps) - 1))] * 1000, 1),
        "gaps_over_50ms": sum(g > 0.05 for g in gaps),
    }


# -- concurrent ------------------------------------------------------------------------------------
def part_concurrent(clf, args) -> dict[str, Any]:
    """Cold: every KV sequence empty, so each concurrent call evaluates WildGuard's template
    prefix itself while sequential calls reuse the previous call's. Warm: every sequence holds
    an earlier exchange (an app or server that has been running), so both reuse the prefix."""
    items = [exchange(clf, args.concurrent_tokens, f"chat {i}") for i in range(args.concurrent)]
    earlier = [exchange(clf, args.concurrent_tokens, f"earlier {i}") for i in range(clf.backend.slots)]

    async def sequential():
        return [(await clf.aclassify([item]))[0] for item in items]

    async def together(batch):
        return [r[0] for r in await asyncio.gather(*(clf.aclassify([item]) for item in batch))]

    clf.backend.reset()
    want = clf.classify(items)
    backend, out = clf.backend, {}
    for state in ("cold", "warm"):
        runs = {}
        for name, fn in (("sequential", sequential), ("concurrent", lambda: together(items))):
            backend.reset()
            if state == "warm":
                asyncio.run(together(earlier))
            before = (backend.tokens_evaluated, backend.stats.rounds, backend.stats.decode_calls)
            start = time.perf_counter()
            results = asyncio.run(fn())
            wall = time.perf_counter() - start
            after = (backend.tokens_evaluated, backend.stats.rounds, backend.stats.decode_calls)
            d = [b - a for a, b in zip(before, after)]
            runs[name] = {
                "wall_s": round(wall, 3),
                "tokens": d[0],
                "rounds": d[1],
                "decode_calls": d[2],
                "tokens_per_s": round(d[0] / wall, 1),
                **same_results(results, want),
            }
        runs["concurrent_over_sequential"] = round(runs["concurrent"]["wall_s"] / runs["sequential"]["wall_s"], 3)
        out[state] = runs
    return out


# -- server ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def serving(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(60)


def post_and_leave(port: int, body: bytes, after: float) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        time.sleep(after)


def part_server(clf, args, load) -> dict[str, Any]:
    import httpx

    from wildguard_lite.server import ServeSettings, create_app

    # Calibrate: the exchange length one request needs for ~--server-seconds of engine time.
    probe = exchange(clf, 200, "probe")
    clf.backend.reset()
    start = time.perf_counter()
    clf.classify([probe])
    per_token = (time.perf_counter() - start) / len(clf.encode(probe)[0])
    heavy_tokens = max(50, int(args.server_seconds / per_token))
    bodies = [json.dumps({"items": [exchange(clf, heavy_tokens, f"heavy {i}")]}).encode() for i in range(args.clients)]
    normal = {"prompt": "Is the weather nice in the river towns today? (normal)"}
    starts: dict[str, float] = {}

    def make(index: int, threads: int):  # the app closes its classifier when it stops: a new one each
        served = load()
        YesNoOnly(served)
        classify = served.classify

        def recorded(items, *a, **kw):  # when a worker hands a request to the engine
            starts.setdefault(items[0]["prompt"], time.perf_counter())
            return classify(items, *a, **kw)

        served.classify = recorded
        return served

    out: dict[str, Any] = {"heavy_request_tokens": heavy_tokens, "clients": args.clients, "workers": args.workers}
    for abort in (True, False):
        app = create_app(
            ServeSettings(workers=args.workers, request_timeout_s=600, max_queue=64), classifier_factory=make
        )
        with serving(app) as port, httpx.Client(timeout=600) as http:
            app.state.runtime["pool"].abort_abandoned = abort
            url = f"http://127.0.0.1:{port}/v1/classify"
            http.post(url, json={"items": [normal]}).raise_for_status()  # warm: the template's prefix cached
            solo_start = time.perf_counter()
            http.post(url, json={"items": [normal]}).raise_for_status()
            solo = time.perf_counter() - solo_start
            leavers = [threading.Thread(target=post_and_leave, args=(port, b, 0.1)) for b in bodies]
            for t in leavers:
                t.start()
            for t in leavers:
                t.join()
            starts.clear()
            sent = time.perf_counter()
            reply = http.post(url, json={"items": [normal]})
            latency = time.perf_counter() - sent
            reply.raise_for_status()
            metrics = http.get(f"http://127.0.0.1:{port}/metrics").text
            drained = time.perf_counter()
        aborted = {
            line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("wildguard_aborted_total{") and not line.endswith(" 0")
        }
        out["abort_on" if abort else "abort_off"] = {
            "solo_latency_s": round(solo, 3),
            "latency_s": round(latency, 3),
            "start_delay_s": round(starts[normal["prompt"]] - sent, 3),
            "delay_beyond_solo_s": round(latency - solo, 3),
            "aborted": aborted,
            "shutdown_s": round(time.perf_counter() - drained, 2),  # the abandoned work still running, if any
        }
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="a .gguf (the 4-layer stand-in for the issue's targets)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--long-tokens", type=int, default=2000, help="response tokens of the long exchange")
    p.add_argument("--cancel-after", type=float, default=0.05, help="seconds after the start of the call")
    p.add_argument("--tries", type=int, default=20)
    p.add_argument("--concurrent", type=int, default=8, help="aclassify calls awaited together")
    p.add_argument("--concurrent-tokens", type=int, default=300)
    p.add_argument("--clients", type=int, default=16, help="server: clients that disconnect")
    p.add_argument("--workers", type=int, default=8, help="server: --workers")
    p.add_argument("--server-seconds", type=float, default=2.0, help="server: engine time of each abandoned request")
    p.add_argument("--out", type=Path)
    add_runtime_flags(p, "threads", "n_ctx")


def run(args: argparse.Namespace) -> int:
    args.threads = args.threads or default_threads()
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise InvalidInputError(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")

    import wildguard_lite

    def load(threads=args.threads):
        return wildguard_lite.load(args.model, threads=threads, n_ctx=args.n_ctx, slots=max(8, args.concurrent))

    report: dict[str, Any] = {
        "model": str(args.model),
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    with load() as clf:
        YesNoOnly(clf)
        if "cancel" in parts:
            report["cancel"] = part_cancel(clf, args, load)
        if "heartbeat" in parts:
            long_item = exchange(clf, args.long_tokens, "long")
            report["heartbeat"] = {f"threads_{args.threads}": heartbeat(clf, long_item)}
        if "concurrent" in parts:
            report["concurrent"] = part_concurrent(clf, args)
        if "server" in parts:
            report["server"] = part_server(clf, args, load)
    if "heartbeat" in parts and args.threads > 1:
        with load(args.threads - 1) as clf:
            YesNoOnly(clf)
            report["heartbeat"][f"threads_{args.threads - 1}"] = heartbeat(clf, exchange(clf, args.long_tokens, "long"))
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    report["targets"] = targets(report)
    if args.out:
        write_json(args.out, report)  # temp file, then rename
    print(json.dumps(report, indent=2))
    return 0


def targets(report: dict[str, Any]) -> dict[str, bool]:
    out = {}
    if "cancel" in report:
        c = report["cancel"]
        out["cancel_sync_max_le_100ms"] = c["sync"]["max_ms"] <= 100
        out["cancel_async_max_le_100ms"] = c["async"]["max_ms"] <= 100
        out["next_call_equals_fresh"] = c["next_call_vs_fresh"]["labels_differing"] == 0
    if "heartbeat" in report:
        for name, h in report["heartbeat"].items():
            out[f"heartbeat_{name}_worst_gap_le_50ms"] = h["worst_gap_ms"] <= 50
    for state, c in report.get("concurrent", {}).items():
        out[f"concurrent_{state}_results_equal"] = c["concurrent"]["labels_differing"] == 0
        out[f"concurrent_{state}_wall_le_1.1x_sequential"] = c["concurrent_over_sequential"] <= 1.1
    if "server" in report:
        out["server_start_delay_le_200ms"] = report["server"]["abort_on"]["start_delay_s"] <= 0.2
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="wildguard-lite bench cancel", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
