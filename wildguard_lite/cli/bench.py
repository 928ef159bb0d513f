"""wildguard-lite bench NAME [options]: accuracy, speed, batch, streaming and serving benchmarks.

`wildguard-lite bench NAME --help` says what a benchmark measures and how (docs/benchmarks.md).
"""

# Each benchmark is one module in benchmarks/ with `add_arguments(parser)` and `run(args)`;
# this is their one entry point.

from __future__ import annotations

import argparse
import importlib

from . import run

# name -> (module in wildguard_lite.benchmarks, one-line help)
BENCHMARKS = {
    "reference": ("reference", "run the transformers reference (official procedure) on a dataset"),
    "accuracy": ("accuracy", "agreement with the reference and F1 against gold, per artifact"),
    "speed": ("speed", "latency of score mode against generation and the prompt-processing limit"),
    "standin": ("standin", "write a random-weight checkpoint with WildGuard's exact shape"),
    "batch": ("batch", "batch jobs: prefix order against file order, local against Ray, memory"),
    "streaming": ("streaming", "streaming moderation: cost per check, output rate kept up with, flag delay"),
    "concurrent-streams": ("concurrent_streams", "many chats at once: N streams on one classifier"),
    "http-streams": ("http_streams", "N streamed conversations against one 'serve' process"),
    "cancel": ("cancel", "cancellation and deadlines: cancel latency, loop heartbeat, abandoned server work"),
    "load": ("load", "load test of 'serve': N concurrent clients for T seconds"),
    "two-phase": ("two_phase", "prompt, then prompt + response, with and without serve's prefix cache"),
    "batching": ("batching", "one llama.cpp batch of several sequences against one after another"),
    "clients": ("clients", "one timed call through each real moderation client (OpenAI SDK, LiteLLM...)"),
    "onnx-toy": ("onnx_toy", "ONNX variants against the reference and the GGUF files on the toy"),
    "ladder": ("ladder", "the quant ladder on this CPU: size, RSS, prefill tok/s, |dP| against f16, per file"),
    "soak": ("soak", "mixed traffic against 'serve' for N minutes: RSS, descriptors, threads, latency per minute"),
    "fleet": ("fleet", "serve --ray: tokens per call with and without affinity, throughput, a killed replica"),
    "contention": ("contention", "per-item time by thread count while a CPU-bound process holds one core"),
}


def benchmark_module(name: str):
    return importlib.import_module(f"wildguard_lite.benchmarks.{BENCHMARKS[name][0]}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wildguard-lite bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="name", required=True, metavar="NAME")
    for name, (_, help_) in BENCHMARKS.items():
        module = benchmark_module(name)  # light at import: heavy libraries load inside run()
        q = sub.add_parser(
            name, help=help_, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(q)
        q.set_defaults(run=module.run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args.run, args)
