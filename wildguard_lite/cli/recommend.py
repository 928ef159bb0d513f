"""wildguard-lite recommend --report ladder.json --ram GB [--min-speed TOK_S] [--min-agreement A]

Pick a GGUF file for this machine from a `wildguard-lite bench ladder` report (measured on this
CPU): among the files whose peak memory fits --ram, whose prefill speed reaches --min-speed and
whose answers agree with the full-precision file's at least --min-agreement, the one whose
P(yes) moves least (ties: the faster). Says why, and why each other file was passed over
(docs/laptop.md).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from . import run

DEFAULT_MIN_AGREEMENT = 0.99
LADDER_KIND = "wildguard-lite ladder"  # benchmarks/ladder.py's REPORT_KIND


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wildguard-lite recommend", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--report", required=True, type=Path, help="a `wildguard-lite bench ladder` JSON report")
    p.add_argument("--ram", required=True, type=float, help="memory the guard may use, in GiB (peak RSS)")
    p.add_argument("--min-speed", type=float, default=0.0, help="prefill tokens/s the file must reach (default: any)")
    p.add_argument(
        "--min-agreement",
        type=float,
        default=DEFAULT_MIN_AGREEMENT,
        help="share of answers equal to the full-precision file's (the lower of verdict and cue agreement; "
        "default %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the choice and the reasons as JSON")
    return p


def read_report(path: Path) -> dict[str, Any]:
    from ..errors import InvalidInputError

    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInputError(f"--report {path}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise InvalidInputError(f"--report {path}: not JSON ({exc})") from None
    if not isinstance(report, dict) or report.get("kind") != LADDER_KIND or not isinstance(report.get("files"), list):
        raise InvalidInputError(f"--report {path}: not a ladder report; write one with `wildguard-lite bench ladder`")
    for n, f in enumerate(report["files"]):
        for key in ("file", "peak_rss_bytes", "prefill_tok_s"):
            if key not in f:
                raise InvalidInputError(f"--report {path}: file entry {n} has no '{key}'; run `bench ladder` again")
    return report


def agreement(entry: dict[str, Any]) -> float:
    values = [v for v in (entry.get("verdict_agreement"), entry.get("cue_agreement")) if v is not None]
    return min(values) if values else 0.0


def pick(
    report: dict[str, Any], ram_gib: float, min_speed: float = 0.0, min_agreement: float = DEFAULT_MIN_AGREEMENT
) -> tuple[dict[str, Any] | None, list[str]]:
    """The chosen file entry (None if none qualifies) and one reason line per file passed over."""
    budget = ram_gib * 2**30
    passed, reasons = [], []
    for f in report["files"]:
        why = []
        if f["peak_rss_bytes"] > budget:
            why.append(f"peak RSS {f['peak_rss_bytes'] / 2**30:.2f} GiB > {ram_gib:g} GiB")
        if f["prefill_tok_s"] < min_speed:
            why.append(f"prefill {f['prefill_tok_s']:.1f} tok/s < {min_speed:g}")
        if agreement(f) < min_agreement:
            why.append(f"agreement {agreement(f):.4f} < {min_agreement:g}")
        if why:
            reasons.append(f"{f['file']}: " + "; ".join(why))
        else:
            passed.append(f)
    if not passed:
        return None, reasons
    best = min(passed, key=lambda f: (f.get("dp_mean") or 0.0, -f["prefill_tok_s"]))
    for f in passed:
        if f is not best:
            reasons.append(
                f"{f['file']}: fits, but |dP| mean {f.get('dp_mean') or 0:.4f} (chosen: {best.get('dp_mean') or 0:.4f})"
                if (f.get("dp_mean") or 0) != (best.get("dp_mean") or 0)
                else f"{f['file']}: as close, but slower ({f['prefill_tok_s']:.1f} tok/s)"
            )
    return best, reasons


def _recommend(args) -> int:
    from ..errors import InvalidInputError

    for name, value, low in (("--ram", args.ram, 0.0), ("--min-speed", args.min_speed, 0.0)):
        if not math.isfinite(value) or value < low or (name == "--ram" and value == 0):
            raise InvalidInputError(f"{name} must be a positive number, got {value}")
    if not 0.0 <= args.min_agreement <= 1.0:
        raise InvalidInputError(f"--min-agreement must be between 0 and 1, got {args.min_agreement}")
    report = read_report(args.report)
    best, reasons = pick(report, args.ram, args.min_speed, args.min_agreement)
    cpu = report.get("cpu", {})
    where = (
        f"measured on {cpu.get('name', '?')} ({', '.join(cpu.get('simd', []))}), {report.get('threads')} threads, "
        f"load {report.get('load_average_before')}, engine: {report.get('engine')}"
    )
    if args.json:
        print(json.dumps({"choice": best, "passed_over": reasons, "measured": where}, indent=2))
    elif best is None:
        print(
            f"no file in {args.report} meets --ram {args.ram:g} GiB, --min-speed {args.min_speed:g}, "
            f"--min-agreement {args.min_agreement:g}; {where}"
        )
    else:
        imatrix = f", imatrix {best['imatrix']}" if best.get("imatrix") else ""
        print(f"{best.get('path', best['file'])}")
        print(
            f"  {best.get('quant', '?')}{imatrix}: peak RSS {best['peak_rss_bytes'] / 2**30:.2f} GiB "
            f"(budget {args.ram:g}), file {best.get('bytes', 0) / 2**30:.2f} GiB, prefill {best['prefill_tok_s']:.1f} "
            f"tok/s, agreement {agreement(best):.4f}, |dP(yes)| mean {best.get('dp_mean') or 0:.4f} "
            f"max {best.get('dp_max') or 0:.4f} against {Path(report.get('reference', '?')).name}"
        )
        print(f"  {where}")
    if not args.json:
        for line in reasons:
            print(f"  passed over {line}")
    return 0 if best is not None else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(_recommend, args)
