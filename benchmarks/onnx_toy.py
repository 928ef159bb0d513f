"""ONNX variants against the reference and the GGUF files on the toy's held-out set.

    wildguard-lite bench onnx-toy --toy DIR --onnx DIR --gguf DIR [--limit N] [--repeats R]

--onnx and --gguf are `wildguard-lite convert` output folders (their manifest.json lists the
files). Prints label agreement (score mode) with the transformers reference and with GGUF f16,
and the per-item latency of every file, median over `--repeats` passes. Speed is measured
here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from wildguard_lite.contract import LABEL_KEYS
from wildguard_lite.defaults import default_threads
from wildguard_lite.flags import add_runtime_flags


def _items(path: Path, limit: int) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"prompt": r["prompt"], **({"response": r["response"]} if r.get("response") else {})} for r in rows][:limit]


def _labels(results) -> list[tuple]:
    return [tuple(r[k] for k in LABEL_KEYS) for r in results]


def _agreement(a, b) -> float:
    return sum(x == y for x, y in zip(_labels(a), _labels(b))) / len(a)


def _files(folder: Path) -> dict[str, Path]:
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    return {f"{a['format']} {a['quant']}": folder / a["file"] for a in manifest["artifacts"]}


def measure(model: Path, items: list[dict], threads: int, repeats: int, mode: str) -> tuple[list[dict], float]:
    import wildguard_lite

    with wildguard_lite.load(model, mode=mode, threads=threads) as clf:
        clf.classify(items[:3])  # warm-up: the constant prefix is cached from here on, as in use
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            results = clf.classify(items)
            times.append((time.perf_counter() - t0) / len(items))
    return results, statistics.median(times)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--toy", type=Path, required=True, help="toy checkpoint folder (heldout.jsonl inside)")
    p.add_argument("--onnx", type=Path, required=True)
    p.add_argument("--gguf", type=Path, required=True)
    p.add_argument("--limit", type=int, default=240)
    p.add_argument("--repeats", type=int, default=3)
    add_runtime_flags(p, "threads", "mode")


def run(args: argparse.Namespace) -> int:
    args.threads = args.threads or default_threads()
    items = _items(args.toy / "heldout.jsonl", args.limit)
    from wildguard_lite.reference import TransformersReference

    reference = TransformersReference(args.toy, device="cpu").classify(items)
    files = {**_files(args.gguf), **_files(args.onnx)}
    results, latency = {}, {}
    for name, path in files.items():
        results[name], latency[name] = measure(path, items, args.threads, args.repeats, args.mode)
    base = results.get("gguf f16")
    print(f"{len(items)} held-out items, {args.mode} mode, {args.threads} threads, median of {args.repeats}")
    print(f"{'file':<12} {'vs reference':>13} {'vs GGUF f16':>12} {'ms/item':>9}")
    for name in files:
        vs_f16 = f"{_agreement(results[name], base):.3f}" if base else "-"
        print(f"{name:<12} {_agreement(results[name], reference):>13.3f} {vs_f16:>12} {latency[name] * 1000:>9.2f}")
    return 0
