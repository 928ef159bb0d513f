"""Contention: per-item time when another process competes for a core, by thread count.

A desktop app or a guard beside an app server rarely has the cores to itself. llama.cpp's
threads meet at a barrier after each step (spinning there unless OpenMP is told to wait
passively), so a thread that shares its core with another process slows every step. This measures, for each setting, the time of each
classify call while a CPU-bound competitor runs pinned to one core (and, for reference, alone),
and how much work the competitor got done meanwhile (what the guard costs the user's app):

- `all`: one thread per available core (at most 8), llama.cpp's OpenMP threads waiting
  passively (OMP_WAIT_POLICY=PASSIVE, the library's default);
- `spin`: the same with OMP_WAIT_POLICY=ACTIVE: threads spin at every barrier (before PASSIVE);
- `default`: what `wildguard_lite.defaults.default_threads()` chooses;
- `1`, `2`, ...: fixed counts; `nice` runs the same as `default` at `--nice 10`.

Each setting runs in its own child process (the default is decided at load, as in real use).
Usage: `wildguard-lite bench contention --model FILE.gguf --report REPORT.json`; docs/cpu.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from wildguard_lite.defaults import DEFAULT_MAX_THREADS, available_cores
from wildguard_lite.errors import InvalidInputError
from wildguard_lite.flags import add_runtime_flags
from wildguard_lite.utils import python_command

from .data import write_json

DEFAULT_SETTINGS = ("all", "spin", "default", "1", "2", "nice")
NAMED = ("all", "spin", "default", "nice")
NICE = 10  # the `nice` setting's priority (0 normal, 19 lowest)

# The competitor: a busy loop pinned to one core; prints its iterations per second when stopped.
COMPETITOR = """
import os, signal, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
start, n, stop = time.perf_counter(), 0, []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
while not stop:
    n += 1
print(n / (time.perf_counter() - start), flush=True)
"""

# One setting: load with `threads`, warm up, classify the items one at a time, print the times.
CHILD = """
import json, os, sys, time
config = json.loads(sys.argv[1])
if config["nice"]:
    os.nice(config["nice"])
import wildguard_lite
from wildguard_lite.defaults import default_threads
threads = config["threads"]
chosen = default_threads() if threads is None else threads
with wildguard_lite.load(config["model"], threads=chosen, n_ctx=config["n_ctx"]) as clf:
    clf.classify_one("warm-up: the template's prefix is cached from here on")
    times = []
    for prompt in config["prompts"]:
        t = time.perf_counter()
        clf.classify_one(prompt)
        times.append(time.perf_counter() - t)
print(json.dumps({"threads": chosen, "times": times}))
"""


def prompts(n: int) -> list[str]:
    """Distinct prompt-only checks of ~20-40 tokens (the common case of a guard)."""
    topics = [
        "bake sourdough bread",
        "pick a lock",
        "write a cover letter",
        "renew a passport",
        "learn the guitar",
        "track a parcel",
        "start a vegetable garden",
        "fix a bike chain",
    ]
    return [
        f"Request {i}: can you explain, step by step, how to {topics[i % len(topics)]} this weekend?" for i in range(n)
    ]


def setting_threads(name: str) -> tuple[int | None, int, str]:
    """(threads or None for the default, nice, OMP_WAIT_POLICY) of a setting name."""
    if name in ("all", "spin"):
        return min(available_cores(), DEFAULT_MAX_THREADS), 0, "ACTIVE" if name == "spin" else "PASSIVE"
    if name == "default":
        return None, 0, "PASSIVE"
    if name == "nice":
        return None, NICE, "PASSIVE"
    return int(name), 0, "PASSIVE"


def start_competitor(core: int) -> subprocess.Popen:
    return subprocess.Popen(python_command("-c", COMPETITOR, str(core)), stdout=subprocess.PIPE, text=True)


def stop_competitor(proc: subprocess.Popen) -> float:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return float(out.strip())


def run_setting(model: str, name: str, items: int, n_ctx: int, competitor_core: int | None) -> dict[str, Any]:
    threads, nice, wait_policy = setting_threads(name)
    competitor = start_competitor(competitor_core) if competitor_core is not None else None
    try:
        if competitor is not None:
            time.sleep(1.0)  # let it run (and show in the default's sample of the cores)
        config = {"model": model, "threads": threads, "nice": nice, "n_ctx": n_ctx, "prompts": prompts(items)}
        env = {**os.environ, "OMP_WAIT_POLICY": wait_policy}  # read once, when llama.cpp's libgomp loads
        proc = subprocess.run(
            python_command("-c", CHILD, json.dumps(config)), capture_output=True, text=True, timeout=3600, env=env
        )
    finally:
        rate = stop_competitor(competitor) if competitor is not None else None
    if proc.returncode != 0:
        raise RuntimeError(f"setting {name}: the child failed: {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    times = result["times"]
    return {
        "setting": name,
        "threads": result["threads"],
        "nice": nice,
        "omp_wait_policy": wait_policy,
        "competitor": competitor is not None,
        "items": len(times),
        "mean_s": round(statistics.mean(times), 4),
        "p50_s": round(statistics.median(times), 4),
        "max_s": round(max(times), 4),
        "competitor_iter_per_s": None if rate is None else round(rate),
    }


def measure(
    model: str | os.PathLike,
    settings=DEFAULT_SETTINGS,
    items: int = 12,
    n_ctx: int = 1024,
    core: int | None = None,
    alone: bool = True,
) -> dict[str, Any]:
    """Every setting with the competitor on `core` (default: the last available core), and
    without it when `alone`; the competitor's own rate alone is measured for reference."""
    cores = sorted(os.sched_getaffinity(0))
    core = cores[-1] if core is None else core
    competitor = start_competitor(core)
    time.sleep(3.0)
    alone_rate = stop_competitor(competitor)
    rows = []
    for name in settings:
        rows.append(run_setting(str(model), name, items, n_ctx, core))
        if alone:
            rows.append(run_setting(str(model), name, items, n_ctx, None))
    contended = [r for r in rows if r["competitor"]]
    best = min(r["mean_s"] for r in contended)
    for r in contended:
        r["over_best"] = round(r["mean_s"] / best, 2)
        r["competitor_share"] = round(r["competitor_iter_per_s"] / alone_rate, 2)
    return {
        "model": str(model),
        "cores": cores,
        "competitor_core": core,
        "items": items,
        "competitor_alone_iter_per_s": round(alone_rate),
        "load_before": os.getloadavg(),
        "rows": rows,
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        "| setting | threads | OpenMP wait | competitor | mean s/item | p50 | max | x best | competitor's share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['setting']} | {r['threads']} | {r['omp_wait_policy'].lower()} | "
            f"{'yes' if r['competitor'] else 'no'} | {r['mean_s']} | "
            f"{r['p50_s']} | {r['max_s']} | {r.get('over_best', '')} | {r.get('competitor_share', '')} |"
        )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="a .gguf (e.g. the 4-layer stand-in, converted)")
    p.add_argument("--report", required=True, type=Path, help="JSON report (a .md table is written beside it)")
    p.add_argument(
        "--settings",
        default=",".join(DEFAULT_SETTINGS),
        help=f"comma-separated: {', '.join(NAMED)}, or thread counts (default %(default)s)",
    )
    p.add_argument("--items", type=int, default=12, help="classify calls per setting (default %(default)s)")
    add_runtime_flags(p, "n_ctx", n_ctx=1024)
    p.add_argument("--core", type=int, help="the core the competitor runs on (default: the last available)")
    p.add_argument("--no-alone", action="store_true", help="skip the runs without the competitor")


def run(args: argparse.Namespace) -> int:
    if not args.model.is_file():
        raise InvalidInputError(f"{args.model}: no such model file")
    if args.items < 1:
        raise InvalidInputError(f"--items must be at least 1, got {args.items}")
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    for name in settings:
        if name not in NAMED and not (name.isdigit() and int(name) >= 1):
            raise InvalidInputError(f"--settings: unknown setting '{name}'; use {', '.join(NAMED)} or a thread count")
    report = measure(args.model, settings, args.items, args.n_ctx, args.core, alone=not args.no_alone)
    write_json(args.report, report)
    text = table(report)
    args.report.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    print(text)
    print(f"wrote {args.report}")
    return 0
