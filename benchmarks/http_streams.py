"""N streamed conversations against one `serve` process (`wildguard-lite bench http-streams`).

    wildguard-lite bench http-streams --model toy-wildguard-q8_0.gguf --conversations 8 32 --out report.json

Each conversation's answer grows by ~16 tokens per round; every round, all conversations post
their answer so far to `/v1/classify` at once (the gateway recipe of docs/streaming.md: a
guardrail called with the growing answer). The server's `wildguard_tokens_evaluated_total`
(from `/metrics`) before and after each round gives the tokens the model evaluated per call;
with one slot per conversation each call should cost its new tokens plus WildGuard's constant.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from wildguard_lite.utils import python_command
from .data import write_json
from wildguard_lite.flags import add_runtime_flags

from .concurrent_streams import texts_for
from .traffic import threads_args


class Server:
    """`wildguard-lite serve` in a child process on a free port."""

    def __init__(self, argv: list[str], wait_s: float = 120.0):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        code = "import sys; from wildguard_lite.cli import main; sys.exit(main(sys.argv[1:]))"
        self.proc = subprocess.Popen(
            [*python_command("-c", code), "serve", "--port", str(port), *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=dict(os.environ),
        )
        for _ in range(int(wait_s * 10)):
            try:
                self.get("/health")
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"serve exited: {self.proc.stderr.read().decode()[-800:]}") from None
                time.sleep(0.1)
        raise RuntimeError(f"serve did not become healthy in {wait_s:g} s")

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            return r.read().decode()

    def post(self, path: str, body: dict) -> Any:
        request = urllib.request.Request(
            self.base + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=600) as r:
            return json.loads(r.read())

    def metric(self, name: str) -> float:
        line = next(
            x for x in self.get("/metrics").splitlines() if x.startswith(name + " ") or x.startswith(name + "{")
        )
        return float(line.split()[-1])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def measure(model: Path, n: int, tokens: int, threads: int | None, n_ctx: int) -> dict[str, Any]:
    import wildguard_lite

    with wildguard_lite.load(model, n_ctx=n_ctx, slots=1) as clf:  # the texts and their token counts only
        chats = texts_for(clf, n, tokens, seed=n)
        growing = [[("".join(chunks[: k + 1])) for k in range(len(chunks))] for _, chunks in chats]
        lengths = [[len(clf.tokenizer.encode_exchange(p, t)) for t in texts] for (p, _), texts in zip(chats, growing)]
    argv = [
        "--model",
        str(model),
        "--n-ctx",
        str(n_ctx),
        "--workers",
        str(n),
        "--slots",
        str(n),
        "--max-queue",
        str(4 * n),
        *threads_args(threads),
    ]
    server = Server(argv)
    rounds = []
    try:
        steps = min(len(g) for g in growing)
        for k in range(steps):
            before = server.metric("wildguard_tokens_evaluated_total")
            barrier = threading.Barrier(n)

            def one(i, k=k, barrier=barrier):
                barrier.wait()
                server.post("/v1/classify", {"items": [{"prompt": chats[i][0], "response": growing[i][k]}]})

            workers = [threading.Thread(target=one, args=(i,)) for i in range(n)]
            start = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            wall = time.perf_counter() - start
            evaluated = server.metric("wildguard_tokens_evaluated_total") - before
            new = statistics.mean(lengths[i][k] - (lengths[i][k - 1] if k else 0) for i in range(n))
            rounds.append({"tokens_per_call": evaluated / n, "new_tokens_per_call": new, "wall_s": wall})
    finally:
        server.close()
    steady = rounds[1:]
    per_call = sorted(r["tokens_per_call"] for r in steady)
    return {
        "conversations": n,
        "rounds": len(rounds),
        "first_round_tokens_per_call": rounds[0]["tokens_per_call"],
        "tokens_per_call": {
            "min": per_call[0],
            "median": statistics.median(per_call),
            "p90": per_call[int(0.9 * (len(per_call) - 1))],
            "max": per_call[-1],
        },
        "new_tokens_per_call": round(statistics.mean(r["new_tokens_per_call"] for r in steady), 1),
        "constant_per_call": round(statistics.mean(r["tokens_per_call"] - r["new_tokens_per_call"] for r in steady), 1),
        "s_per_round": round(statistics.mean(r["wall_s"] for r in steady), 3),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--conversations", type=int, nargs="+", default=[8, 32])
    p.add_argument("--tokens", type=int, default=200, help="answer length per conversation")
    add_runtime_flags(p, "threads", "n_ctx")  # the KV pool holds two contexts: room for 32 x 250 tokens
    p.add_argument("--out", type=Path)


def run(args: argparse.Namespace) -> int:
    report = {
        "model": str(args.model),
        "runs": [measure(args.model, n, args.tokens, args.threads, args.n_ctx) for n in args.conversations],
    }
    if args.out:
        write_json(args.out, report)  # temp file, then rename
    print(json.dumps(report, indent=2))
    return 0
