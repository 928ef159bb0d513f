"""wildguard-lite classify --model FILE (--prompt TEXT [--response TEXT] | --input F --output F)"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from ..batch import BAD_ROW_POLICIES, DEFAULT_WINDOW, ORDERS
from ..ray_data import DEFAULT_BATCH_SIZE
from ..contract import CUES, LABEL_KEYS
from ..defaults import DEFAULT_NICE, lower_priority
from ..flags import NICE_HELP, RUNTIME_FLAGS, add_runtime_flags, runtime_config
from . import run

_ANSWER = {"harmful": "yes", "unharmful": "no", "refusal": "yes", "compliance": "no", None: "n/a"}
# The verdict's lines: WildGuard's own cue for each label ("Harmful request:" ...).
_ROWS = tuple(zip(CUES, LABEL_KEYS))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wildguard-lite classify", description=__doc__)
    p.add_argument(
        "--model",
        required=True,
        type=Path,
        help="a .gguf file, or an ONNX model.onnx (or its folder), made by 'wildguard-lite convert'",
    )
    p.add_argument("--prompt", help="the user's request")
    p.add_argument("--response", help="the assistant's response (optional)")
    p.add_argument(
        "--input", type=Path, help="batch input, streamed: .jsonl (objects with prompt/response/id), .csv or .parquet"
    )
    p.add_argument(
        "--output",
        type=Path,
        help="batch output, .jsonl or .parquet, in input order (resumable: a rerun skips done rows)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (single exchange)")
    add_runtime_flags(p, *RUNTIME_FLAGS)
    p.add_argument("--nice", type=int, default=DEFAULT_NICE, help=NICE_HELP + " (default %(default)s)")
    b = p.add_argument_group("batch (--input/--output)")
    b.add_argument(
        "--window",
        type=int,
        default=DEFAULT_WINDOW,
        help=f"rows in flight, reordered to share prefixes (default {DEFAULT_WINDOW})",
    )
    b.add_argument(
        "--order",
        choices=ORDERS,
        default="prefix",
        help="prefix: run each window sorted by token ids, reusing shared prefixes (default); file: as read",
    )
    b.add_argument(
        "--on-bad-row",
        choices=BAD_ROW_POLICIES,
        default="stop",
        help="stop: exit with an error naming the row, keeping the rows before it (default); "
        "record: write an error record for it and go on",
    )
    b.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run on Ray: alone starts a local instance; an address (host:6379, ray://host:10001) "
        "or 'auto' joins a running cluster; the model path must be readable on every node",
    )
    b.add_argument("--actors", type=int, default=1, help="Ray actors, each loading the model once (default 1)")
    b.add_argument("--batch-size", type=int, help=f"rows per Ray batch (default {DEFAULT_BATCH_SIZE})")
    return p


def format_verdict(result: dict[str, Any]) -> str:
    """Readable three-line verdict with P(yes) per answered label."""
    lines = []
    for title, key in _ROWS:
        value = result.get(key)
        score = (result.get("scores") or {}).get(key)
        prob = f"  P(yes)={score:.3f}" if score is not None else ""
        lines.append(f"{title:<18} {_ANSWER.get(value, '?'):<4} {value or '':<11}{prob}".rstrip())
    if result.get("is_parsing_error"):
        lines.append("(the model's answer could not be parsed)")
    return "\n".join(lines)


def _single(args, clf) -> int:
    result = clf.classify_one(args.prompt, args.response)
    print(json.dumps(result, ensure_ascii=False) if args.json else format_verdict(result))
    return 0


def _batch(args, config) -> int:
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from ..batch import check_options, run_batch

    check_options(args.window, args.order, args.on_bad_row)
    console = Console(stderr=True)
    options: dict[str, Any] = dict(on_bad_row=args.on_bad_row)
    job: Callable[..., Any] = run_batch
    if args.ray is None:
        options.update(window=args.window, order=args.order)
    else:  # the same job on Ray actors (ray_data builds on batch, not the other way round)
        from ..ray_data import classify_file_on_ray

        job = classify_file_on_ray
        options.update(address=args.ray, actors=args.actors, batch_size=args.batch_size)
    if not console.is_terminal:  # logs and pipes get the summary alone
        report = job(args.input, args.output, args.model, config, **options)
    else:
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
        ) as bar:
            task = bar.add_task("classifying", total=None)

            def progress(report) -> None:
                bar.update(
                    task,
                    description=f"{report.resumed + report.classified + report.errors} rows written "
                    f"({report.classified} classified now)",
                )

            report = job(args.input, args.output, args.model, config, progress=progress, **options)
    if report.resumed:
        console.print(f"resuming: {report.resumed} of {report.rows} rows already in {args.output}")
    console.print(report.summary(), highlight=False)
    print(
        f"wrote {args.output} ({report.rows} rows, {report.classified + report.errors} classified now"
        + (f", {report.errors} error records" if report.errors else "")
        + ")"
    )
    return 0


def check_output_path(output: Path) -> None:
    """Refuse an --output that cannot work before any model is loaded: a folder, or a place
    where no file can be created (/proc, /sys, a read-only mount)."""
    import tempfile

    from ..errors import InvalidInputError

    if output.is_dir():
        raise InvalidInputError(f"--output {output} is a folder; give a file name, e.g. {output / 'results.jsonl'}")
    parent = output.parent
    if parent.is_dir():
        try:
            with tempfile.NamedTemporaryFile(dir=parent, prefix=".wildguard-lite-probe-"):
                pass
        except OSError as exc:
            raise InvalidInputError(
                f"--output {output}: cannot create files in {parent} ({exc.strerror}); choose a writable folder"
            ) from None


def _classify(args) -> int:
    from ..contract import check_text
    from ..errors import InvalidInputError
    from ..loading import load

    single = args.prompt is not None
    if single == (args.input is not None):
        raise InvalidInputError("give either --prompt (one exchange) or --input with --output (a batch)")
    if args.input is not None and args.output is None:
        raise InvalidInputError("--input needs --output FILE.jsonl")
    if args.response is not None and not single:
        raise InvalidInputError("--response goes with --prompt")
    for flag, text in (("--prompt", args.prompt), ("--response", args.response)):
        if text is not None:
            check_text(text, flag)  # undecodable argv bytes arrive as lone surrogates
    if args.input is not None:
        if args.output.resolve() == args.input.resolve():
            raise InvalidInputError("--output must not be the input file")
        check_output_path(args.output)
    if single and args.ray is not None:
        raise InvalidInputError("--ray goes with --input/--output (a batch)")
    if args.ray is None and (args.actors != 1 or args.batch_size is not None):
        raise InvalidInputError("--actors and --batch-size go with --ray (a batch on Ray)")
    config = runtime_config(args)  # every runtime option checked before any work
    lower_priority(args.nice)  # before the engine starts its threads
    if not single:
        # The batch writes nothing before its first result: a refusal up front leaves no file.
        return _batch(args, config)
    with load(args.model, config) as clf:
        return _single(args, clf)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(_classify, args)


if __name__ == "__main__":
    sys.exit(main())
