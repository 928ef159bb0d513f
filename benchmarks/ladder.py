"""The quant ladder on this CPU: per GGUF file its size, memory, prefill speed and how far its
answers move from a full-precision file's, for `wildguard-lite recommend`.

Each file runs in its own child process with the library's defaults (its peak RSS is its own;
the reference always with an f16 KV cache, so `--kv-type q8_0` measures the cache's effect too):
raw prefill of `--prefill-tokens` fresh tokens (median of `--rounds`), then every item's three
answer cues read teacher-forced ("no" after each cue), giving P(yes) per cue; and the verdicts
`classify` returns. Against the reference file (f16 by default): |dP(yes)| at the cues, the
share of cues on the same side of 0.5, and the share of items whose three verdicts are equal.
With `--passes 2` the files' speed runs again in reverse order (a load change shows as spread).

    wildguard-lite convert CHECKPOINT --quant f16,q8_0,q4_k_m,q4_0,iq4_nl --out ladder/
    wildguard-lite convert CHECKPOINT --quant iq4_nl,iq3_m,iq3_xxs --imatrix --out ladder/
    wildguard-lite bench ladder --dir ladder/ --report ladder.json
    wildguard-lite recommend --report ladder.json --ram 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from wildguard_lite.contract import LABEL_KEYS
from wildguard_lite.defaults import KV_TYPES, default_threads
from wildguard_lite.errors import InvalidInputError, WildGuardLiteError
from wildguard_lite.flags import add_runtime_flags
from wildguard_lite.utils import python_command

from .data import N_CTX, load_rows, to_item, write_json
from .speed import _PARAGRAPH, _PROMPTS

REPORT_KIND = "wildguard-lite ladder"
FLOAT_QUANTS = ("f32", "bf16", "f16")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", type=Path, help="a `convert` output folder: every GGUF its manifest.json lists")
    p.add_argument("--model", action="append", type=Path, default=[], help="a GGUF file; repeatable")
    p.add_argument("--reference", type=Path, help="the file others are compared with (default: the f16/bf16/f32 one)")
    p.add_argument("--dataset", help="rows in the WildGuardTest layout (e.g. the toy's heldout.jsonl); else built-in")
    p.add_argument("--limit", type=int, default=48, help="items from the dataset (default %(default)s)")
    p.add_argument("--prefill-tokens", type=int, default=256, help="tokens per prefill timing (default %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="prefill timings per file and pass (default %(default)s)")
    p.add_argument("--passes", type=int, default=2, help="speed passes over the files, alternating order")
    p.add_argument(
        "--cues-only",
        action="store_true",
        help="skip classify's verdicts (a random-weight stand-in answers neither yes nor no)",
    )
    p.add_argument("--engine", default="", help="what the files are (e.g. '4-layer stand-in'), kept in the report")
    p.add_argument("--report", required=True, type=Path, help="JSON report (read by `wildguard-lite recommend`)")
    add_runtime_flags(p, "threads", "n_ctx", "kv_type", n_ctx=N_CTX)


def cpu_description() -> dict[str, Any]:
    """The CPU's name and the SIMD extensions llama.cpp's kernels use (Linux; else the platform)."""
    import platform

    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name in ("", platform.machine()):
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "avx_vnni", "f16c")
    return {"name": name, "cores": os.cpu_count(), "simd": [f for f in wanted if f in flags]}


def _files(args: argparse.Namespace) -> list[dict[str, Any]]:
    """[{path, quant, imatrix}] from --dir's manifest and --model."""
    files: list[dict[str, Any]] = []
    if args.dir is not None:
        manifest = args.dir / "manifest.json"
        if not manifest.is_file():
            raise InvalidInputError(
                f"--dir {args.dir}: no manifest.json; give a `wildguard-lite convert` output folder"
            )
        for a in json.loads(manifest.read_text(encoding="utf-8")).get("artifacts", []):
            if a.get("format") == "gguf" and (args.dir / a["file"]).is_file():
                files.append({"path": args.dir / a["file"], "quant": a["quant"], "imatrix": a.get("imatrix")})
    for path in args.model:
        if not path.is_file():
            raise InvalidInputError(f"--model {path}: no such file")
        files.append({"path": path, "quant": _quant_of(path), "imatrix": None})
    if not files:
        raise InvalidInputError("no GGUF files: give --dir (a convert output folder) or --model")
    return files


def _quant_of(path: Path) -> str:
    from wildguard_lite.convert.quantize import QUANTS

    stem = path.stem.lower().removesuffix("-imat")
    for q in sorted((*QUANTS, *FLOAT_QUANTS), key=len, reverse=True):
        if stem.endswith(q):
            return q
    return "unknown"


def items_for(rows: list[dict] | None, limit: int) -> list[dict[str, Any]]:
    if rows:
        return [to_item(r) for r in rows[:limit]]
    built = [{"prompt": p} for p in _PROMPTS]
    built += [{"prompt": p, "response": _PARAGRAPH} for p in _PROMPTS]
    return built[:limit]


def run(args: argparse.Namespace) -> int:
    if args.kv_type not in KV_TYPES:
        raise InvalidInputError(f"--kv-type must be one of {', '.join(KV_TYPES)}")
    for name in ("limit", "prefill_tokens", "rounds", "passes"):
        if getattr(args, name) < 1:
            raise InvalidInputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    files = _files(args)
    ref_path = args.reference or next((f["path"] for f in files if f["quant"] in FLOAT_QUANTS), None)
    if ref_path is None:
        raise InvalidInputError("no f16/bf16/f32 file among them; add one (--model) or name --reference")
    if not Path(ref_path).is_file():
        raise InvalidInputError(f"--reference {ref_path}: no such file")
    items = items_for(load_rows(args.dataset) if args.dataset else None, args.limit)
    common = {
        "items": items,
        "threads": args.threads,
        "n_ctx": args.n_ctx,
        "kv_type": args.kv_type,
        "verdicts": not args.cues_only,
    }
    load_before = os.getloadavg()
    # The reference runs with an f16 KV cache: --kv-type q8_0 then measures the cache's effect too.
    ref = _child(
        {**common, "kv_type": "f16", "model": str(ref_path), "prefill_tokens": args.prefill_tokens, "rounds": 1}
    )
    entries = []
    for f in files:
        print(f"{f['path'].name}: measuring", flush=True)
        m = _child({**common, "model": str(f["path"]), "prefill_tokens": args.prefill_tokens, "rounds": args.rounds})
        entries.append({"file": f["path"].name, "path": str(f["path"]), "quant": f["quant"], "imatrix": f["imatrix"]})
        entries[-1].update(_compare(m, ref))
    for p in range(1, args.passes):  # speed only, the other way round
        for e in entries[:: -1 if p % 2 else 1]:
            m = _child(
                {
                    **common,
                    "items": [],
                    "model": e["path"],
                    "prefill_tokens": args.prefill_tokens,
                    "rounds": args.rounds,
                }
            )
            e["prefill_tok_s_runs"] += m["prefill_tok_s_runs"]
    for e in entries:
        e["prefill_tok_s"] = round(statistics.median(e["prefill_tok_s_runs"]), 1)
    report = {
        "kind": REPORT_KIND,
        "engine": args.engine or "unspecified",
        "cpu": cpu_description(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "threads": args.threads or default_threads(),
        "n_ctx": args.n_ctx,
        "kv_type": args.kv_type,
        "reference": str(ref_path),
        "n_items": len(items),
        "dataset": args.dataset or "built-in",
        "files": entries,
    }
    write_json(args.report, report)
    _print_table(report)
    print(f"wrote {args.report}")
    return 0


def _compare(m: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    deltas = [abs(a - b) for pa, pb in zip(m["cue_p_yes"], ref["cue_p_yes"]) for a, b in zip(pa, pb)]
    sides = [(a >= 0.5) == (b >= 0.5) for pa, pb in zip(m["cue_p_yes"], ref["cue_p_yes"]) for a, b in zip(pa, pb)]
    same = [a == b for a, b in zip(m["verdicts"], ref["verdicts"])]
    return {
        "bytes": m["bytes"],
        "rss_after_load_bytes": m["rss_after_load_bytes"],
        "peak_rss_bytes": m["peak_rss_bytes"],
        "prefill_tok_s_runs": m["prefill_tok_s_runs"],
        "verdict_agreement": round(sum(same) / len(same), 4) if same else None,
        "cue_agreement": round(sum(sides) / len(sides), 4) if sides else None,
        "dp_mean": round(statistics.mean(deltas), 5) if deltas else None,
        "dp_max": round(max(deltas), 5) if deltas else None,
    }


def _print_table(report: dict[str, Any]) -> None:
    cpu = report["cpu"]
    print(
        f"{cpu['name']} ({', '.join(cpu['simd'])}), {report['threads']} threads, load {report['load_average_before']}"
    )
    print(f"{'file':<36} {'MiB':>8} {'RSS MiB':>8} {'tok/s':>7} {'agree':>6} {'cue':>6} {'|dP| mean':>9} {'max':>7}")
    for e in report["files"]:
        print(
            f"{e['file']:<36} {e['bytes'] / 2**20:>8.1f} {e['peak_rss_bytes'] / 2**20:>8.0f} {e['prefill_tok_s']:>7.1f} "
            f"{e['verdict_agreement'] or 0:>6.3f} {e['cue_agreement'] or 0:>6.3f} {e['dp_mean'] or 0:>9.4f} "
            f"{e['dp_max'] or 0:>7.4f}"
        )


def _child(config: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
    proc = subprocess.run(
        python_command("-m", "wildguard_lite.benchmarks.ladder", json.dumps(config)),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise WildGuardLiteError(f"{config['model']}: ladder run failed ({tail[0]})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_file(config: dict[str, Any]) -> dict[str, Any]:
    """One file, in this process: load with the library's defaults, prefill, cues, verdicts."""
    from wildguard_lite import load
    from wildguard_lite.runtime import p_yes

    path = Path(config["model"])
    clf = load(path, threads=config["threads"], n_ctx=config["n_ctx"], kv_type=config["kv_type"])
    with open("/proc/self/statm") as f:
        rss_after_load = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    tok, backend = clf.tokenizer, clf.backend
    text_ids = tok.encode_exchange((_PARAGRAPH * 40).strip())
    n = config["prefill_tokens"]
    if len(text_ids) < n + config["rounds"] + 1 or n + 1 > backend.n_ctx:
        raise InvalidInputError(f"--prefill-tokens {n} is more than the text or the context holds")
    runs = []
    backend.logits_at(text_ids[:32], [31])  # warm-up: threads and buffers
    for r in range(config["rounds"]):
        ids = [text_ids[0]] + text_ids[2 + r : 1 + r + n]  # a new sequence each round: nothing cached
        t = time.perf_counter()
        backend.logits_at(ids, [len(ids) - 1])
        runs.append(round(len(ids) / (time.perf_counter() - t), 2))
    cue_p, verdicts = [], []
    for item in config["items"]:
        ids, _ = clf.encode(item)
        batch, positions = list(ids), []
        for k, cue in enumerate(tok.cue_ids):
            batch += list(cue)
            positions.append(len(batch) - 1)
            if k < len(tok.cue_ids) - 1:
                batch.append(tok.no_id)
        logits = backend.logits_at(batch, positions)
        cue_p.append([p_yes(lg, tok.yes_id, tok.no_id) for lg in logits])
        if config["verdicts"]:
            result = clf.classify([item])[0]
            verdicts.append([result.get(k) for k in LABEL_KEYS] + [bool(result.get("is_parsing_error"))])
    clf.close()
    return {
        "bytes": path.stat().st_size,
        "rss_after_load_bytes": rss_after_load,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "prefill_tok_s_runs": runs,
        "cue_p_yes": cue_p,
        "verdicts": verdicts,
    }


# The child process `_child` starts (an internal entry; users run `wildguard-lite bench ladder`).
if __name__ == "__main__":
    print(json.dumps(measure_file(json.loads(sys.argv[1]))))
