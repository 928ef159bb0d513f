"""wildguard-lite pull REPO [--quant q4_k_m] [--revision REV] [--token T] [--force-download]

Download one pre-converted GGUF from a hub repo published with `convert --push-to-hub`, through the
Hugging Face cache, and check its sha256 against the repo's manifest.json. Prints the verified
path (use it with `classify --model`, or load "hf://REPO" directly). With HF_HUB_OFFLINE=1 the
cache alone is used.
"""

from __future__ import annotations

import argparse

from . import run


def build_parser() -> argparse.ArgumentParser:
    from ..hub import DEFAULT_PULL_QUANT

    p = argparse.ArgumentParser(
        prog="wildguard-lite pull", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("repo", help="hub repo id, e.g. owner/wildguard-gguf (or hf://owner/name[@revision])")
    p.add_argument("--quant", default=DEFAULT_PULL_QUANT, help=f"artifact quant (default: {DEFAULT_PULL_QUANT})")
    p.add_argument("--revision", help="branch, tag or commit to pin (default: main)")
    p.add_argument("--token", help="hub token (default: HF_TOKEN or the one saved by `hf auth login`)")
    p.add_argument("--force-download", action="store_true", help="download again even if cached")
    return p


def _pull(args) -> int:
    from ..hub import pull

    path = pull(args.repo, args.quant, args.revision, token=args.token, force_download=args.force_download)
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(_pull, args)
