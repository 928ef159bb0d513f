"""wildguard-lite serve --model FILE [--host 127.0.0.1] [--port 8000] [--workers N] [--max-queue M] [--api-key-file F]

A moderation HTTP API: POST /v1/moderations (OpenAI shape), POST /v1/classify (native),
GET /health, GET /metrics (Prometheus). Binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wildguard-lite serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="a .gguf file made by 'wildguard-lite convert'")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=int, default=1,
                   help="model workers, each its own llama.cpp context and memory (default 1)")
    p.add_argument("--threads", type=int, help="CPU threads per worker (default: the cores divided among workers)")
    p.add_argument("--max-queue", type=int, default=16,
                   help="requests waiting beyond the busy workers before answering 429 (default 16)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds a request may queue and run before 504 (default 60)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit, 413 beyond (default 1 MiB)")
    p.add_argument("--max-items", type=int, default=64, help="items per request, 413 beyond (default 64)")
    p.add_argument("--n-ctx", type=int, default=4096, help="context length in tokens; longer input gets 413 (default 4096)")
    p.add_argument("--mode", choices=("score", "generate"), default="score", help="see 'classify --help' (default score)")
    p.add_argument("--prefix-cache-mb", type=float, default=256.0,
                   help="memory cap of the shared KV prefix cache for two-phase checks; 0 turns it off (default 256)")
    p.add_argument("--threshold", action="append", metavar="LABEL=P",
                   help="label 'yes' when P(yes) >= P (repeatable; see 'classify --help'; default: the model's argmax)")
    p.add_argument("--api-key-file", type=Path,
                   help="require 'Authorization: Bearer <key>' with the key on this file's first line")
    return p


def _serve(args) -> int:
    from ..errors import ModelFileError
    from ..runtime import parse_threshold_specs
    from ..server import ServeSettings, read_api_key, serve

    if not args.model.exists():
        raise ModelFileError(f"{args.model}: no such model file; make one with 'wildguard-lite convert'")
    settings = ServeSettings(
        model=args.model, host=args.host, port=args.port, workers=args.workers, threads=args.threads,
        max_queue=args.max_queue, request_timeout_s=args.timeout, max_body_bytes=args.max_body_bytes,
        max_items=args.max_items, n_ctx=args.n_ctx, mode=args.mode, prefix_cache_mb=args.prefix_cache_mb,
        api_key=read_api_key(args.api_key_file) if args.api_key_file else None,
        thresholds=parse_threshold_specs(args.threshold),
    )
    serve(settings)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(_serve, args)


if __name__ == "__main__":
    sys.exit(main())
