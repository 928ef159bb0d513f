"""wildguard-lite toy DIR [--seed N] [--legacy true|false] [--quiet]

Build the small, locally trained toy WildGuard (Hugging Face layout) used by the tests and the
demo, and print its held-out accuracy under the official procedure. Offline, a few minutes on
2 CPU cores; needs the [convert] extra (torch, transformers).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InvalidInputError, WildGuardLiteError

_TASKS = (("prompt harm", "prompt_harmfulness"), ("refusal", "response_refusal"),
          ("response harm", "response_harmfulness"), ("prompt-only n/a", "prompt_only_na"),
          ("parse errors", "parse_error_rate"))


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value == "true"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wildguard-lite toy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path, help="output folder (replaced if it holds an earlier toy)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--legacy", type=_bool, default=True, metavar="true|false",
                   help="the tokenizer's legacy flag, trained with (default true)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def _run(args: argparse.Namespace) -> int:
    from ..toy import build_toy

    if args.seed < 0:
        raise InvalidInputError(f"--seed must be >= 0, got {args.seed}")
    report = build_toy(args.dir, seed=args.seed, legacy=args.legacy, quiet=args.quiet)
    acc = report["accuracy"]
    print(f"toy WildGuard v{report['toy_version']} in {args.dir}: {report['n_params']:,} parameters, vocab {report['vocab_size']}, "
          f"built in {report['build_s']} s")
    aug = report["accuracy_augmented"]
    print(f"held-out ({report['n_heldout']} rows): official procedure / augmented split (hardened ids)")
    for title, key in _TASKS:
        print(f"  {title + ':':<17} {acc[key]:7.1%} / {aug[key]:.1%}")
    flips = report["neutral_suffix_flips"]
    print(f"a neutral sentence appended to each prompt changed the verdict of {flips['rows']}/{flips['of_rows']} rows")
    if not report["passed"]:
        print("warning: held-out accuracy is below 95%", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except WildGuardLiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
