"""wildguard-lite bench {reference,accuracy,speed,standin}: accuracy and speed against the reference."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..defaults import DEFAULT_MODE, MODES

from . import run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wildguard-lite bench", description=__doc__)
    sub = p.add_subparsers(dest="what", required=True)

    r = sub.add_parser("reference", help="run the transformers reference (official procedure) on a dataset")
    r.add_argument("--model", required=True, help="Hugging Face checkpoint folder or hub id")
    r.add_argument("--revision", help="hub revision")
    r.add_argument("--dataset", required=True, help=".jsonl/.csv/.parquet in the WildGuardTest layout, or 'wildguardtest'")
    r.add_argument("--output", required=True, type=Path, help="reference JSONL to write")
    r.add_argument("--limit", type=int, help="first N rows only")

    a = sub.add_parser("accuracy", help="agreement with the reference and F1 against gold, per artifact")
    a.add_argument("--reference", required=True, help="reference JSONL from 'bench reference', or a model folder/hub id")
    a.add_argument("--model", required=True, action="append", type=Path, help="artifact (.gguf or ONNX); repeatable")
    a.add_argument("--dataset", required=True)
    a.add_argument("--report", required=True, type=Path, help="JSON report (a .md and PNG plots are written beside it)")
    a.add_argument("--mode", choices=MODES, default=DEFAULT_MODE)
    a.add_argument("--target-agreement", type=float, help="name the smallest artifact meeting this agreement")
    a.add_argument("--limit", type=int)
    a.add_argument("--threads", type=int)

    s = sub.add_parser("speed", help="latency of score mode against generation and the prompt-processing limit")
    s.add_argument("--model", required=True, action="append", type=Path, help="artifact; repeatable")
    s.add_argument("--dataset", help="rows to draw items from (else synthesized)")
    s.add_argument("--report", required=True, type=Path)
    s.add_argument("--threads", type=int)
    s.add_argument("--prompt-only", type=int, default=6, help="prompt-only items (<= 64 user tokens)")
    s.add_argument("--full", type=int, default=3, help="full exchanges (~--full-tokens tokens)")
    s.add_argument("--full-tokens", type=int, default=400)
    s.add_argument("--repeats", type=int, default=1)
    s.add_argument("--n-ctx", type=int, default=2048)

    t = sub.add_parser("standin", help="write a random-weight checkpoint with WildGuard's exact shape")
    t.add_argument("--out", required=True, type=Path)
    t.add_argument("--tokenizer", type=Path, help="folder with tokenizer.model (default: the toy's)")
    t.add_argument("--layers", type=int, help="fewer layers (for a quick check); default 32 as WildGuard")
    return p


def _write_json(path: Path, data) -> None:
    from ..convert.manifest import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _reference(args) -> int:
    from ..benchmarks.accuracy import run_reference
    from ..benchmarks.data import load_rows

    rows = load_rows(args.dataset)[: args.limit]
    results = run_reference(args.model, rows, args.output, args.revision)
    print(f"wrote {args.output} ({len(results)} rows)")
    return 0


def _accuracy(args) -> int:
    from ..benchmarks.accuracy import compare, load_reference, markdown, plots, recommend, run_reference
    from ..benchmarks.data import load_rows, to_item
    from ..benchmarks.speed import artifact_bytes
    from ..errors import InvalidInputError
    from ..loading import load

    rows = load_rows(args.dataset)[: args.limit]
    ref_path = Path(args.reference)
    if ref_path.is_file() and ref_path.suffix == ".jsonl":
        meta, ref = load_reference(ref_path, len(rows))
    else:
        ref = run_reference(args.reference, rows, None)
        meta = {"model": args.reference, "computed": "on the fly"}
    artifacts = []
    for model in args.model:
        if not model.exists():
            raise InvalidInputError(f"{model}: no such artifact")
        with load(model, mode=args.mode, threads=args.threads) as clf:
            t = time.perf_counter()
            ours = clf.classify([to_item(r) for r in rows])
            ms = (time.perf_counter() - t) * 1000 / len(rows)
        entry = {"model": str(model), "bytes": artifact_bytes(model), "ms_per_item": round(ms, 2), **compare(rows, ref, ours)}
        artifacts.append(entry)
        print(f"{model}: agreement " + ", ".join(f"{k} {v:.4f}" for k, v in entry["agreement"].items()))
    report = {"reference": meta, "dataset": str(args.dataset), "n": len(rows), "mode": args.mode, "artifacts": artifacts}
    if args.target_agreement is not None:
        best = recommend(artifacts, args.target_agreement)
        report["target_agreement"] = args.target_agreement
        report["recommendation"] = None if best is None else {"model": best["model"], "bytes": best["bytes"]}
        print(f"target {args.target_agreement}: " + (f"smallest meeting it: {best['model']}" if best else "none meets it"))
    _write_json(args.report, report)
    md = args.report.with_suffix(".md")
    md.write_text(markdown(report), encoding="utf-8")
    pngs = plots(report, args.report)
    print(f"wrote {args.report}, {md}" + "".join(f", {p}" for p in pngs))
    return 0


def _speed(args) -> int:
    from ..benchmarks.data import load_rows
    from ..benchmarks.speed import SpeedConfig, check_targets, measure, speed_items
    from ..errors import InvalidInputError
    from ..gguf_meta import read_gguf_info
    from ..tokenization import WildGuardTokenizer, load_tokenizer_from_folder

    rows = load_rows(args.dataset) if args.dataset else None
    entries = []
    for model in args.model:
        if not model.exists():
            raise InvalidInputError(f"{model}: no such artifact")
        if model.suffix == ".gguf":
            spec = read_gguf_info(model).tokenizer
            tok = WildGuardTokenizer(spec)
        else:
            tok = load_tokenizer_from_folder(model.parent)
        items = speed_items(tok, rows, args.prompt_only, args.full, args.full_tokens)
        config = SpeedConfig(model=str(model), items=items, threads=args.threads, n_ctx=args.n_ctx, repeats=args.repeats)
        entry = measure(config)
        entry["targets"] = check_targets(entry)
        entries.append(entry)
        _print_speed(entry)
    _write_json(args.report, {"artifacts": entries})
    print(f"wrote {args.report}")
    return 0


def _print_speed(e: dict) -> None:
    def p50(part, cls):
        return e.get(part, {}).get(cls, {}).get("p50_s")

    print(f"{e['model']}: load {e['load_s']} s, peak RSS {e['peak_rss_bytes'] / 2**20:.0f} MiB "
          f"({e['rss_over_file']}x file)")
    for cls in ("prompt_only", "full_exchange"):
        print(f"  {cls}: score p50 {p50('score', cls)} s, generate {p50('generate_baseline', cls)} s, "
              f"limit {p50('limit', cls)} s")
    for name, c in e.get("targets", {}).items():
        print(f"  target {name}: {c['value']} ({c['target']}) {'met' if c['met'] else 'MISSED'}")


def _standin(args) -> int:
    from rich.progress import Progress

    from ..benchmarks.standin import build_standin

    if args.tokenizer is None:
        from ..toy import ensure_toy

        args.tokenizer = ensure_toy()
    overrides = {"num_hidden_layers": args.layers} if args.layers else None
    with Progress(transient=True) as bar:
        task = bar.add_task("writing random bf16 tensors", total=None)
        build_standin(args.out, args.tokenizer, overrides, progress=lambda d, n: bar.update(task, completed=d, total=n))
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {args.out} ({size / 2**30:.2f} GiB); convert it with: wildguard-lite convert {args.out} --out DIR")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    body = {"reference": _reference, "accuracy": _accuracy, "speed": _speed, "standin": _standin}[args.what]
    return run(body, args)
