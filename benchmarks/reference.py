"""The reference: WildGuard's official procedure (transformers, slow tokenizer, BOS once,
greedy, official parser; bf16 on CUDA when present, else fp32 on CPU) on a dataset, with P(yes)
per label, written as JSONL for `bench accuracy`.

    wildguard-lite bench reference --model allenai/wildguard --revision <commit> \\
        --dataset wildguardtest.parquet --output ref.jsonl
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

from wildguard_lite.errors import InvalidInputError

from .data import load_rows, to_item


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="Hugging Face checkpoint folder or hub id")
    p.add_argument("--revision", help="hub revision")
    p.add_argument(
        "--dataset", required=True, help=".jsonl/.csv/.parquet in the WildGuardTest layout, or 'wildguardtest'"
    )
    p.add_argument("--output", required=True, type=Path, help="reference JSONL to write")
    p.add_argument("--limit", type=int, help="first N rows only")


def run(args: argparse.Namespace) -> int:
    rows = load_rows(args.dataset)[: args.limit]
    results = run_reference(args.model, rows, args.output, args.revision)
    print(f"wrote {args.output} ({len(results)} rows)")
    return 0


def run_reference(
    model: str,
    rows: list[dict],
    out: Path | None,
    revision: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[dict]:
    """The official procedure (transformers, slow tokenizer, greedy, official parser) on rows."""
    from wildguard_lite.convert.hub import resolve_source
    from wildguard_lite.reference import TransformersReference

    folder, source = resolve_source(model, revision)
    ref = TransformersReference(folder)
    results = []
    for i, row in enumerate(rows):
        results.append({"index": i, **ref.classify([to_item(row)])[0]})
        if progress:
            progress(i + 1)
    if out is not None:
        meta = {
            "model": source,
            "device": ref.device,
            "dtype": str(ref.dtype).replace("torch.", ""),
            "versions": _versions(),
            "n": len(rows),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        from wildguard_lite.convert.manifest import atomic_write_text

        atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [{"meta": meta}, *results]))
    return results


def load_reference(path: Path, n_rows: int) -> tuple[dict, list[dict]]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines or "meta" not in lines[0]:
        raise InvalidInputError(f"{path}: not a reference file from 'wildguard-lite bench reference'")
    rows = lines[1:]
    if len(rows) != n_rows:
        raise InvalidInputError(
            f"{path}: has {len(rows)} results but the dataset has {n_rows} rows; run the reference on the same dataset"
        )
    return lines[0]["meta"], rows


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("wildguard-lite", "torch", "transformers", "llama-cpp-python", "onnxruntime"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out
