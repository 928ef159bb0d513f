"""wildguard-lite toy DIR [--seed N] [--legacy true|false] [--rebuild] [--quiet]

Put the small, locally trained toy WildGuard (Hugging Face layout) used by the tests and the
demo into DIR, and print its held-out accuracy under the official procedure. A toy already in
DIR is kept, and seed 0 is copied from the cache (~/.cache/wildguard-lite; built there on first
use); --rebuild trains a new one. A build is offline, about 10 minutes on 2 idle CPU cores, and
needs the [convert] extra (torch, transformers).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..contract import LABEL_KEYS
from ..errors import InvalidInputError
from . import run

# The report's accuracy keys, titled: the three labels, then the two checks of the answer's form.
_TASKS = (
    *zip(("prompt harm", "refusal", "response harm"), LABEL_KEYS),
    ("prompt-only n/a", "prompt_only_na"),
    ("parse errors", "parse_error_rate"),
)


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value == "true"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wildguard-lite toy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("dir", type=Path, help="output folder (replaced if it holds an earlier toy)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0, the cached toy's)")
    p.add_argument(
        "--legacy",
        type=_bool,
        default=True,
        metavar="true|false",
        help="the tokenizer's legacy flag, trained with (default true)",
    )
    p.add_argument("--rebuild", action="store_true", help="train a new toy even if DIR or the cache has one")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def _run(args: argparse.Namespace) -> int:
    from ..toy import provide_toy

    if args.seed < 0:
        raise InvalidInputError(f"--seed must be >= 0, got {args.seed}")
    report, how = provide_toy(args.dir, seed=args.seed, legacy=args.legacy, rebuild=args.rebuild, quiet=args.quiet)
    acc = report["accuracy"]
    print(
        f"toy WildGuard v{report['toy_version']} in {args.dir} ({how}): {report['n_params']:,} parameters, "
        f"vocab {report['vocab_size']}, built in {report['build_s']} s"
    )
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
    return run(_run, args)
