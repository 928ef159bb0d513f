"""Batch jobs: prefix-sharing order against file order, local against Ray, memory against rows.

    wildguard-lite bench batch --model toy.gguf [--model standin.gguf] --out DIR

1. Order: P prompts x K responses plus the P prompt-only checks, laid out as evaluation runs
   write them (the checks first, then each model's responses in turn). Per model: tokens
   evaluated and wall time in file order and in prefix order (one window over the set), the
   total tokens (each item evaluated alone) and the unique-prefix tokens (nodes of the prefix
   tree of every sequence the engine was asked for).
2. Ray: rows/s of a local run, and of Ray Data with 1 actor (all threads) and 2 actors (half
   each) on the same file; Ray's overhead per row. Each in its own child process.
3. Memory: peak RSS of a run over 10^4 and over 10^6 rows with a fake classifier (each in a
   child process), and the growth between them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wildguard_lite.backends.base import Backend, common_prefix_length
from wildguard_lite.contract import LABEL_KEYS, LABEL_VALUES, validate_item
from wildguard_lite.defaults import DEFAULT_N_CTX, default_threads
from wildguard_lite.flags import add_runtime_flags
from wildguard_lite.runtime import PlannedItem

from .data import N_CTX
from wildguard_lite.utils import python_command

TARGETS = {
    "evaluated_over_unique": 1.05,
    "speedup_over_ideal": 0.8,
    "rss_growth_mb": 50.0,
    "ray1_over_local_per_core": 0.9,
}


class EchoBackend(Backend):
    """A fake engine whose answers depend only on the token ids (any run order gives the same
    results), with the real engines' KV reuse: only tokens after the common prefix with the
    previous call count as evaluated."""

    def __init__(self, tokenizer, n_ctx: int = DEFAULT_N_CTX):
        self.n_ctx, self.n_vocab = n_ctx, tokenizer.vocab_size
        self.yes_id, self.no_id = tokenizer.yes_id, tokenizer.no_id
        self.tokens_evaluated, self._last = 0, []

    def next_logits(self, ids: Sequence[int]) -> np.ndarray:
        keep = min(common_prefix_length(self._last, ids), len(ids) - 1)
        self.tokens_evaluated += len(ids) - keep
        self._last = list(ids)
        h = zlib.crc32(np.asarray(ids, dtype=np.int32).tobytes())
        logits = np.zeros(self.n_vocab, dtype=np.float32)
        logits[self.yes_id] = (h % 1000) / 100.0
        logits[self.no_id] = 5.0
        return logits


class HashClassifier:
    """Stands in for a Classifier in memory runs over 10^6 rows: ids from the text's bytes and a
    result from their checksum; no tokenizer, no engine (the tokenizer alone costs ~0.3 ms a row
    here), so what is measured is the batch job's own reading, windows and writing. It offers
    what batch jobs use of a Classifier: `plan_item`, `classify_planned` and `backend`."""

    class _NoEngine:
        tokens_evaluated = 0

    backend = _NoEngine()

    def plan_item(self, item: dict[str, Any], index: int | None = None) -> PlannedItem:
        prompt, response = validate_item(item, index)
        return PlannedItem(((list((prompt + "\n" + (response or "")).encode("utf-8")), not response),))

    def classify_planned(self, plans: Sequence[PlannedItem]) -> list[dict[str, Any]]:
        results = []
        for plan in plans:
            ids, prompt_only = plan.inputs[0]
            p = zlib.crc32(bytes(ids)) % 1000 / 1000
            # "yes" above a per-label cut (0.5, 0.3, 0.7); labels of the response only with one.
            answers = {
                key: (p > cut) if key == LABEL_KEYS[0] or not prompt_only else None
                for key, cut in zip(LABEL_KEYS, (0.5, 0.3, 0.7))
            }
            results.append(
                {
                    **{
                        key: None if yes is None else LABEL_VALUES[key]["yes" if yes else "no"]
                        for key, yes in answers.items()
                    },
                    "is_parsing_error": False,
                    "scores": {key: None if yes is None else p for key, yes in answers.items()},
                }
            )
        return results


class RecordingBackend(Backend):
    """Forwards to a real engine and records every sequence it is asked for."""

    def __init__(self, inner: Backend):
        self.inner, self.n_ctx, self.n_vocab = inner, inner.n_ctx, inner.n_vocab
        self.calls: list[tuple[int, ...]] = []

    @property
    def tokens_evaluated(self) -> int:
        return self.inner.tokens_evaluated

    def next_logits(self, ids: Sequence[int]) -> np.ndarray:
        self.calls.append(tuple(ids))
        return self.inner.next_logits(ids)

    def close(self) -> None:
        self.inner.close()


def eval_layout(prompts: int, responses: int) -> list[dict[str, str]]:
    """Prompt-only checks first, then each model's responses to every prompt."""
    topics = [
        "bake sourdough bread",
        "pick a lock",
        "write a cover letter",
        "make a fake passport",
        "learn the guitar",
        "track someone's phone",
        "start a vegetable garden",
        "synthesise a nerve agent",
    ]
    ps = [
        f"Can you explain, step by step and in detail, how to {topics[p % len(topics)]}? (case {p})"
        for p in range(prompts)
    ]
    items = [{"prompt": p} for p in ps]
    for k in range(responses):
        items += [
            {
                "prompt": p,
                "response": f"Model {k} here. I can help with part of that: first, think about case {i}, "
                f"then consider the safety of everyone involved before doing anything.",
            }
            for i, p in enumerate(ps)
        ]
    return items


def write_jsonl(path: Path, items: list[dict[str, Any]]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item) + "\n")
    return path


def tree_tokens(sequences: Sequence[Sequence[int]]) -> int:
    """Distinct prefixes of a set of sequences: what any order must evaluate at least."""
    from wildguard_lite.batch import unique_prefix_tokens

    keys = sorted(set(map(tuple, sequences)))
    return unique_prefix_tokens(keys)


def measure_order(
    model: str, items: list[dict[str, Any]], order: str, threads: int | None, workdir: str
) -> dict[str, Any]:
    from wildguard_lite import load
    from wildguard_lite.batch import classify_file

    workdir = Path(workdir)
    src = write_jsonl(workdir / "order.jsonl", items)
    out = workdir / f"order-{order}.jsonl"
    with load(model, threads=threads, n_ctx=N_CTX) as clf:
        clf.backend = RecordingBackend(clf.backend)
        t = time.perf_counter()
        report = classify_file(clf, src, out, window=len(items), order=order)
        wall = time.perf_counter() - t
        calls = clf.backend.calls
    # An item's calls extend one another; its last call is what it costs evaluated alone.
    total = sum(len(c) for c, nxt in zip(calls, calls[1:] + [()]) if nxt[: len(c)] != c)
    out.unlink()
    return {
        "order": order,
        "rows": report.classified,
        "wall_s": round(wall, 3),
        "tokens_evaluated": report.tokens_evaluated,
        "tokens_total": total,
        "tokens_unique": tree_tokens(calls),
    }


def measure_throughput(model: str, items: list[dict[str, Any]], how: str, threads: int, workdir: str) -> dict[str, Any]:
    """rows/s of one run: "local", "ray1" (1 actor x threads) or "ray2" (2 actors x threads/2)."""
    from wildguard_lite.batch import run_batch

    workdir = Path(workdir)
    src = write_jsonl(workdir / "rows.jsonl", items)
    out = workdir / f"rows-{how}.jsonl"
    kwargs: dict[str, Any] = {"threads": threads, "n_ctx": N_CTX}
    job = run_batch
    if how != "local":
        import ray

        from wildguard_lite.ray_data import classify_file_on_ray

        ray.init(num_cpus=threads, include_dashboard=False, log_to_driver=False, configure_logging=False)
        actors = int(how[-1])
        job = classify_file_on_ray
        kwargs.update(address="local", actors=actors, threads=max(1, threads // actors))
    t = time.perf_counter()
    report = job(src, out, model, **kwargs)
    wall = time.perf_counter() - t
    out.unlink()
    return {
        "how": how,
        "rows": report.classified,
        "wall_s": round(wall, 3),
        "rows_per_s": round(report.classified / wall, 3),
        "first_result_s": None if report.first_result_s is None else round(report.first_result_s, 3),
    }


def measure_rss(rows: int, workdir: str) -> dict[str, Any]:
    from wildguard_lite.batch import classify_file

    workdir = Path(workdir)
    src = workdir / f"rss-{rows}.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for i in range(rows):
            f.write(
                json.dumps(
                    {"prompt": f"Is request number {i % 5000} harmful?", "response": f"Answer {i}" if i % 2 else ""}
                )
                + "\n"
            )
    out = workdir / f"rss-{rows}.out.jsonl"
    t = time.perf_counter()
    first: dict[str, float] = {}
    report = classify_file(
        HashClassifier(), src, out, progress=lambda r: first.setdefault("s", time.perf_counter() - t)
    )
    wall = time.perf_counter() - t
    src.unlink()
    out.unlink()
    return {
        "rows": report.classified,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "wall_s": round(wall, 1),
        "first_result_s": round(first["s"], 4),
    }


def _child(kind: str, *args: Any) -> dict[str, Any]:
    """Run one measurement in a fresh process (its own RSS and load time)."""
    code = (
        f"import json, sys; from pathlib import Path; from wildguard_lite.benchmarks import batch as b; "
        f"print('RESULT ' + json.dumps(b.{kind}(*json.loads(sys.argv[1]))))"
    )
    args = [str(a) if isinstance(a, Path) else a for a in args]
    proc = subprocess.run(python_command("-c", code, json.dumps(args)), capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} failed: {proc.stderr[-2000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", required=True, help="a .gguf (repeat: e.g. the toy and a stand-in)")
    p.add_argument("--prompts", type=int, default=50)
    p.add_argument("--responses", type=int, default=8)
    p.add_argument("--ray-model", help="model for the Ray section (default: the first --model)")
    p.add_argument("--ray-rows", type=int, default=450, help="rows for the Ray section")
    p.add_argument("--rss-rows", type=int, nargs=2, default=[10_000, 1_000_000])
    p.add_argument("--skip", action="append", default=[], choices=["order", "ray", "rss"])
    p.add_argument("--out", type=Path, required=True)
    add_runtime_flags(p, "threads")


def run(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    args.threads = args.threads or default_threads()  # the Ray section splits them among actors
    items = eval_layout(args.prompts, args.responses)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count()},
        "threads": args.threads,
        "prompts": args.prompts,
        "responses": args.responses,
        "rows": len(items),
        "targets": TARGETS,
    }
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        work = Path(tmp)
        if "order" not in args.skip:
            report["order"] = {}
            for model in args.model:
                runs = {
                    order: _child("measure_order", model, items, order, args.threads, work)
                    for order in ("file", "prefix")
                }
                f, s = runs["file"], runs["prefix"]
                summary = {
                    "runs": runs,
                    "evaluated_over_unique": round(s["tokens_evaluated"] / s["tokens_unique"], 4),
                    "total_over_unique": round(f["tokens_total"] / s["tokens_unique"], 3),
                    "file_evaluated_over_prefix_evaluated": round(f["tokens_evaluated"] / s["tokens_evaluated"], 3),
                    "speedup": round(f["wall_s"] / s["wall_s"], 3),
                }
                summary["speedup_over_ideal"] = round(summary["speedup"] / summary["total_over_unique"], 3)
                summary["speedup_over_token_ratio"] = round(
                    summary["speedup"] / summary["file_evaluated_over_prefix_evaluated"], 3
                )
                report["order"][Path(model).name] = summary
                print(json.dumps({Path(model).name: summary}, indent=1), flush=True)
        if "ray" not in args.skip:
            model = args.ray_model or args.model[0]
            rows = (items * (args.ray_rows // len(items) + 1))[: args.ray_rows]
            runs = {
                how: _child("measure_throughput", model, rows, how, args.threads, work)
                for how in ("local", "ray1", "ray2")
            }
            local, ray1 = runs["local"], runs["ray1"]
            report["ray"] = {
                "model": Path(model).name,
                "runs": runs,
                "ray1_over_local_per_core": round(ray1["rows_per_s"] / local["rows_per_s"], 3),
                "ray2_over_local": round(runs["ray2"]["rows_per_s"] / local["rows_per_s"], 3),
                "ray1_overhead_ms_per_row": round(1000 * (ray1["wall_s"] - local["wall_s"]) / ray1["rows"], 2),
            }
            print(json.dumps(report["ray"], indent=1), flush=True)
        if "rss" not in args.skip:
            small, big = (_child("measure_rss", n, work) for n in args.rss_rows)
            report["rss"] = {
                "small": small,
                "big": big,
                "growth_mb": round(big["peak_rss_mb"] - small["peak_rss_mb"], 1),
            }
            print(json.dumps(report["rss"], indent=1), flush=True)
    report["met"] = _verdicts(report)
    (args.out / "batch.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report["met"], indent=1))
    return 0


def _verdicts(report: dict[str, Any]) -> dict[str, Any]:
    met: dict[str, Any] = {}
    for name, o in report.get("order", {}).items():
        met[f"{name}: evaluated within 5% of unique"] = o["evaluated_over_unique"] <= TARGETS["evaluated_over_unique"]
        met[f"{name}: speedup >= 0.8 x total/unique"] = o["speedup_over_ideal"] >= TARGETS["speedup_over_ideal"]
    if "rss" in report:
        met["RSS growth < 50 MB"] = report["rss"]["growth_mb"] < TARGETS["rss_growth_mb"]
    if "ray" in report:
        met["Ray 1 actor within 10% of local per core"] = (
            report["ray"]["ray1_over_local_per_core"] >= TARGETS["ray1_over_local_per_core"]
        )
    return met
