"""wildguard-lite classify --model FILE (--prompt TEXT [--response TEXT] | --input F --output F)"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import run

_ANSWER = {"harmful": "yes", "unharmful": "no", "refusal": "yes", "compliance": "no", None: "n/a"}
_ROWS = (("Harmful request", "prompt_harmfulness"), ("Response refusal", "response_refusal"),
         ("Harmful response", "response_harmfulness"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wildguard-lite classify", description=__doc__)
    p.add_argument("--model", required=True, type=Path, help="a .gguf file, or an ONNX model.onnx (or its folder), made by 'wildguard-lite convert'")
    p.add_argument("--prompt", help="the user's request")
    p.add_argument("--response", help="the assistant's response (optional)")
    p.add_argument("--input", type=Path, help="batch input: .jsonl (objects with prompt/response) or .csv")
    p.add_argument("--output", type=Path, help="batch output .jsonl (resumable: a rerun skips done rows)")
    p.add_argument("--json", action="store_true", help="print one JSON object (single exchange)")
    p.add_argument("--mode", choices=("score", "generate"), default="score",
                   help="score: read the answers' probabilities (default); generate: greedy, as the official package")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores, at most 8)")
    p.add_argument("--n-ctx", type=int, default=4096, help="context length in tokens (default 4096)")
    p.add_argument("--threshold", action="append", metavar="LABEL=P",
                   help="label 'yes' when P(yes) >= P, e.g. response_harmfulness=0.3 (repeatable; default: the model's argmax)")
    return p


def format_verdict(result: dict[str, Any]) -> str:
    """Readable three-line verdict with P(yes) per answered label."""
    lines = []
    for title, key in _ROWS:
        value = result.get(key)
        score = (result.get("scores") or {}).get(key)
        prob = f"  P(yes)={score:.3f}" if score is not None else ""
        lines.append(f"{title + ':':<18} {_ANSWER.get(value, '?'):<4} {value or '':<11}{prob}".rstrip())
    if result.get("is_parsing_error"):
        lines.append("(the model's answer could not be parsed)")
    return "\n".join(lines)


def _single(args, clf) -> int:
    result = clf.classify_one(args.prompt, args.response)
    print(json.dumps(result, ensure_ascii=False) if args.json else format_verdict(result))
    return 0


def _batch(args, clf) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..errors import InvalidInputError
    from ..io import ResumableWriter, item_digest, read_items

    rows = read_items(args.input)
    writer = ResumableWriter(args.output)
    try:
        todo = []
        for index, (line, item) in enumerate(rows):
            digest = item_digest(item)
            if writer.check(index, digest, str(args.input)):
                continue
            try:
                clf.encode(item)  # validates and checks the length before any work
            except InvalidInputError as exc:
                raise InvalidInputError(f"{args.input} line {line}: {exc}") from None
            todo.append((index, item, digest))
        console = Console(stderr=True)
        skipped = len(rows) - len(todo)
        if skipped:
            console.print(f"resuming: {skipped} of {len(rows)} rows already in {args.output}")
        with Progress(TextColumn("classifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console) as bar:
            task = bar.add_task("classify", total=len(todo))
            for index, item, digest in todo:
                result = clf.classify([item])[0]
                row = {"index": index, "item_sha256": digest, **({"id": item["id"]} if "id" in item else {}), **result}
                writer.write(row)
                bar.advance(task)
        writer.finish()
    finally:
        writer.close()
    print(f"wrote {args.output} ({len(rows)} rows, {len(todo)} classified now)")
    return 0


def _classify(args) -> int:
    from ..errors import InvalidInputError
    from ..runtime import load, parse_threshold_specs

    single = args.prompt is not None
    if single == (args.input is not None):
        raise InvalidInputError("give either --prompt (one exchange) or --input with --output (a batch)")
    if args.input is not None and args.output is None:
        raise InvalidInputError("--input needs --output FILE.jsonl")
    if args.response is not None and not single:
        raise InvalidInputError("--response goes with --prompt")
    if args.input is not None and args.output.resolve() == args.input.resolve():
        raise InvalidInputError("--output must not be the input file")
    thresholds = parse_threshold_specs(args.threshold)
    with load(args.model, mode=args.mode, threads=args.threads, n_ctx=args.n_ctx, thresholds=thresholds) as clf:
        return _single(args, clf) if single else _batch(args, clf)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(_classify, args)


if __name__ == "__main__":
    sys.exit(main())
