"""wildguard-lite convert SOURCE --format gguf|onnx --quant f16,q8_0,q4_k_m --out DIR"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InvalidInputError
from ..flags import add_runtime_flags
from . import run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wildguard-lite convert", description=__doc__)
    p.add_argument("source", help="local checkpoint folder, or a hub id such as allenai/wildguard")
    p.add_argument("--revision", help="hub revision to pin (branch, tag or commit); recorded in the manifest")
    p.add_argument("--format", default="gguf", help="output format(s), comma-separated: gguf, onnx (default: gguf)")
    p.add_argument(
        "--quant",
        default=None,
        help="comma-separated. GGUF: f32, bf16, f16, q8_0, q6_k, q5_k_m, q5_k_s, q5_0, q4_k_m, q4_k_s, "
        "q4_0, iq4_nl, iq4_xs, q3_k_m, iq3_m, iq3_xxs, q2_k, iq2_m (default: f16,q8_0,q4_k_m; iq3_xxs and "
        "iq2_m need --imatrix; docs/laptop.md). ONNX: fp32, fp16, int8, int4 (default: fp32,int8,int4)",
    )
    p.add_argument(
        "--imatrix",
        nargs="?",
        const="",
        default=None,
        metavar="FILE",
        help="quantize with an importance matrix, computed with transformers over calibration exchanges in "
        "WildGuard's format: the toy's (no FILE) or a JSONL file's ({prompt, response} a line); or a saved "
        "imatrix .gguf. Written beside the GGUFs; quantized files get an -imat suffix",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    p.add_argument("--name", help="base name of the output files (default: from the source)")
    add_runtime_flags(p, "threads")  # quantization and verification
    p.add_argument("--no-verify", action="store_true", help="skip the logit comparison with transformers")
    p.add_argument(
        "--force", action="store_true", help="ONNX: export even when the memory estimate exceeds the available memory"
    )
    p.add_argument("--int4-block-size", type=int, default=None, help="ONNX int4: weights per scale (default: 128)")
    p.add_argument(
        "--int4-accuracy-level",
        type=int,
        default=None,
        help="ONNX int4: MatMulNBits accuracy level 0-4 (default: 4, int8 activations)",
    )
    p.add_argument(
        "--token",
        help="Hugging Face token for a gated/private source and --push-to-hub "
        "(default: HF_TOKEN or the one saved by `hf auth login`)",
    )
    p.add_argument(
        "--push-to-hub",
        metavar="REPO",
        help="upload the GGUF files, manifest.json and a generated model card to this hub repo (created if missing)",
    )
    p.add_argument("--accuracy-report", type=Path, help="a `bench accuracy` JSON report: its figures go on the card")
    return p


def parse_formats(text: str) -> tuple[str, ...]:
    """--format: known names only, checked before the quants (whose choices depend on it)."""
    from ..convert.pipeline import FORMATS

    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        what = f"unknown --format '{unknown[0]}'" if unknown else "--format is empty"
        raise InvalidInputError(f"{what}; choose from {', '.join(FORMATS)} (comma-separated for several)")
    return formats


def _convert(args) -> int:
    from ..convert.onnx_export import DEFAULT_ONNX_QUANTS, OnnxQuantConfig
    from ..convert.pipeline import DEFAULT_QUANTS, ConvertOptions, convert_checkpoint, parse_quants
    from ..convert.tempfiles import cleanup_on_signals

    formats = parse_formats(args.format)
    default = (*(DEFAULT_QUANTS if "gguf" in formats else ()), *(DEFAULT_ONNX_QUANTS if "onnx" in formats else ()))
    defaults = OnnxQuantConfig()
    onnx = OnnxQuantConfig(
        int4_block_size=defaults.int4_block_size if args.int4_block_size is None else args.int4_block_size,
        int4_accuracy_level=(
            defaults.int4_accuracy_level if args.int4_accuracy_level is None else args.int4_accuracy_level
        ),
    )
    options = ConvertOptions(
        source=args.source,
        out_dir=args.out,
        formats=formats,
        quants=parse_quants(args.quant or ",".join(default or DEFAULT_QUANTS), formats),
        force=args.force,
        onnx=onnx,
        revision=args.revision,
        verify=not args.no_verify,
        threads=args.threads,
        name=args.name,
        token=args.token,
        push_to_hub=args.push_to_hub,
        accuracy_report=args.accuracy_report,
        imatrix=args.imatrix,
    )
    # A kill (SIGTERM, SIGINT, SIGHUP) removes the temp files and folders and ends optimum's child.
    with cleanup_on_signals():
        manifest = convert_checkpoint(options)
    print(f"manifest: {args.out / 'manifest.json'} ({len(manifest['artifacts'])} artifacts)")
    failed = manifest.get("verification", {}).get("status") == "failed" or any(
        a.get("verification", {}).get("status") == "failed" for a in manifest["artifacts"]
    )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(_convert, args)
