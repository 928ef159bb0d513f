"""`convert`: checkpoint -> GGUF files (quantized) + manifest.json."""

from __future__ import annotations

import os
import re
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

from wildguard_lite.errors import InvalidInputError, WildGuardLiteError
from wildguard_lite.convert.gguf_export import FLOAT_TYPES, check_checkpoint, write_gguf
from wildguard_lite.convert.hub import resolve_source
from wildguard_lite.convert.manifest import update_manifest
from wildguard_lite.utils import sha256_file
from wildguard_lite.convert.quantize import QUANTS, check_quant, quantize
from wildguard_lite.convert.tempfiles import forget, make_temp_file, remove_stale_temps

FORMATS = ("gguf", "onnx")
DEFAULT_QUANTS = ("f16", "q8_0", "q4_k_m")


@dataclass(frozen=True)
class ConvertOptions:
    source: str
    out_dir: Path
    formats: tuple[str, ...] = ("gguf",)
    quants: tuple[str, ...] = DEFAULT_QUANTS
    revision: str | None = None
    verify: bool = True
    threads: int | None = None
    name: str | None = None
    extra: dict = field(default_factory=dict)
    force: bool = False  # ONNX: export even when the memory estimate exceeds what is available
    onnx: object = None  # an onnx_export.OnnxQuantConfig; None: its defaults
    token: str | None = None  # hub token for the source download and --push-to-hub
    push_to_hub: str | None = None  # repo id to publish the GGUF artifacts, manifest and card to
    accuracy_report: Path | None = None  # a `bench accuracy` JSON report for the model card
    # Importance matrix for the quantized GGUF types: None (none), "" (computed on the toy's
    # calibration exchanges), a JSONL file of exchanges, or a saved imatrix .gguf.
    imatrix: str | None = None


def parse_quants(text: str, formats: tuple[str, ...] = ("gguf",)) -> tuple[str, ...]:
    quants = tuple(q.strip().lower() for q in text.split(",") if q.strip())
    if not quants:
        raise InvalidInputError("--quant is empty; e.g. --quant f16,q8_0,q4_k_m")
    from wildguard_lite.convert.onnx_export import ONNX_QUANTS

    known = (*((*FLOAT_TYPES, *QUANTS) if "gguf" in formats else ()), *(ONNX_QUANTS if "onnx" in formats else ()))
    for q in quants:
        if q not in known:
            kind = "/".join(f.upper() for f in formats if f in FORMATS) or "GGUF"
            raise InvalidInputError(f"unknown {kind} quant '{q}'; choose from {', '.join(known)}")
    return tuple(dict.fromkeys(quants))


def _check_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WildGuardLiteError(f"{out_dir}: cannot create the output folder ({exc.strerror})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise WildGuardLiteError(f"{out_dir}: output folder is not writable; choose another --out")


def _base_name(options: ConvertOptions, folder: Path, info: dict) -> str:
    if options.name:
        return options.name
    raw = info.get("repo", "").split("/")[-1] or folder.resolve().name
    return re.sub(r"[^\w.\-]+", "-", raw).strip("-").lower() or "model"


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def convert_checkpoint(options: ConvertOptions, console=None) -> dict:
    """Run a conversion; returns the manifest. Every file is written to a temp name, then renamed."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = console or Console(stderr=True)
    for fmt in options.formats:
        if fmt not in FORMATS:
            raise InvalidInputError(f"unknown --format '{fmt}'; this build supports: {', '.join(FORMATS)}")
    out_dir = Path(options.out_dir)
    _check_out_dir(out_dir)
    if options.push_to_hub and "gguf" not in options.formats:
        raise InvalidInputError("--push-to-hub publishes GGUF artifacts; add --format gguf")
    if options.accuracy_report is not None:
        from wildguard_lite.convert.model_card import read_accuracy_report

        read_accuracy_report(options.accuracy_report)  # refuse a bad report before converting
    remove_stale_temps(out_dir)  # left by earlier runs that were killed
    folder, source_info = resolve_source(options.source, options.revision, options.token)
    config = check_checkpoint(folder)  # refuse unsupported or inconsistent checkpoints before any work
    base = _base_name(options, folder, source_info)
    from wildguard_lite.convert.onnx_export import ONNX_QUANTS

    quants = tuple(q for q in options.quants if q not in ONNX_QUANTS)
    if not quants and "gguf" in options.formats:
        raise InvalidInputError("no GGUF quant in --quant for --format gguf; e.g. --quant f16,q4_k_m,fp32,int4")
    if "onnx" in options.formats:
        manifest = _convert_onnx(options, folder, source_info, out_dir, base, console)
        if "gguf" not in options.formats:
            return manifest
    floats = [q for q in quants if q in FLOAT_TYPES]
    for q in quants:
        if q not in FLOAT_TYPES:
            check_quant(q, config, options.imatrix is not None)  # shapes, imatrix: before any work
    # The quantizer reads a full-precision GGUF: the first float type asked for, else f16
    # written to a temp file and removed afterwards.
    master_type = floats[0] if floats else "f16"
    started = time.perf_counter()
    artifacts: list[dict] = []
    temps: list[Path] = []
    verification: dict = {"status": "skipped", "reason": "--no-verify"}

    imatrix, imatrix_record = None, None
    if options.imatrix is not None and any(q in QUANTS for q in quants):
        imatrix, imatrix_record = _importance_matrix(options, folder, config, out_dir, base, console)

    def final(q: str) -> Path:
        # A quantized file made with the importance matrix is named apart from one made without.
        return out_dir / f"{base}-{q}{'-imat' if imatrix is not None and q in QUANTS else ''}.gguf"

    def temp(q: str) -> Path:
        temps.append(make_temp_file(out_dir, f"{base}-{q}", ".gguf"))  # umask mode, removed on a kill
        return temps[-1]

    def record(path: Path, q: str, seconds: float) -> None:
        artifacts.append(
            {
                "file": path.name,
                "format": "gguf",
                "quant": q,
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
                "seconds": round(seconds, 2),
                **({"imatrix": imatrix_record["file"]} if imatrix_record and q in QUANTS else {}),
            }
        )
        console.print(f"[green]wrote[/green] {path} ({path.stat().st_size / 2**20:.1f} MiB, {seconds:.1f} s)")

    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task(f"GGUF {master_type}", total=None)

            def on_tensor(done: int, total: int, name: str) -> None:
                bar.update(task, completed=done, total=total, description=f"GGUF {master_type}: {name}")

            t0 = time.perf_counter()
            master = temp(master_type)
            write_gguf(folder, master, master_type, source_info, progress=on_tensor)
            master_seconds = time.perf_counter() - t0
        if options.verify:
            from wildguard_lite.convert.verify import verify_gguf

            with console.status("verifying logits against transformers"):
                verification = verify_gguf(folder, master, master_type, options.threads)
            style = {"passed": "green", "failed": "bold red"}.get(verification["status"], "yellow")
            console.print(
                f"[{style}]verification {verification['status']}[/{style}] "
                + ", ".join(f"{k}={v}" for k, v in verification.items() if k != "status")
            )
        if "file" in verification:
            kept = master_type in quants
            verification["file"] = final(master_type).name if kept else f"{master_type} (temporary, not kept)"
        if master_type in quants:
            os.replace(master, final(master_type))
            temps.remove(master)
            record(final(master_type), master_type, master_seconds)
            master = final(master_type)
        for q in quants:
            if q == master_type:
                continue
            t0 = time.perf_counter()
            with console.status(f"quantizing to {q}"):
                if q in FLOAT_TYPES:
                    tmp = temp(q)
                    write_gguf(folder, tmp, q, source_info)
                else:
                    tmp = temp(q)
                    quantize(master, tmp, q, options.threads, imatrix)
            os.replace(tmp, final(q))
            temps.remove(tmp)
            record(final(q), q, time.perf_counter() - t0)
    finally:
        for path in temps:
            path.unlink(missing_ok=True)
    if verification.get("status") == "failed":
        console.print(
            "[bold red]the exported logits disagree with transformers beyond the tolerance; "
            "see verification in manifest.json[/bold red]"
        )
    manifest = update_manifest(
        out_dir,
        source_info,
        artifacts,
        {
            "verification": verification,
            "conversion": {
                "seconds": round(time.perf_counter() - started, 2),
                "peak_rss_bytes": _peak_rss(),
                "master_type": master_type,
            },
            **({"imatrix": imatrix_record} if imatrix_record else {}),
            **options.extra,
        },
    )
    if options.push_to_hub:
        _publish(options, out_dir, manifest, console)
    return manifest


def _importance_matrix(options: ConvertOptions, folder: Path, config: dict, out_dir: Path, base: str, console):
    """The matrix (computed, or read from a saved .gguf), saved beside the GGUFs; returns the
    per-tensor means llama_model_quantize takes and the manifest's record of it."""
    from wildguard_lite.convert.imatrix import (
        calibration_rows,
        check_imatrix,
        compute_imatrix,
        load_imatrix,
        save_imatrix,
    )

    source = Path(options.imatrix) if options.imatrix else None
    if source is not None and source.suffix.lower() == ".gguf":
        matrix = load_imatrix(source)
    else:
        rows, dataset = calibration_rows(source)
        t0 = time.perf_counter()
        with console.status(f"importance matrix: {len(rows)} calibration exchanges through transformers"):
            matrix = compute_imatrix(folder, rows, dataset, options.threads)
        console.print(
            f"[green]importance matrix[/green] {matrix.exchanges} exchanges, {matrix.tokens} tokens "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    check_imatrix(matrix, config)
    path = out_dir / f"{base}.imatrix.gguf"
    tmp = make_temp_file(out_dir, path.name, ".gguf")
    try:
        save_imatrix(matrix, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        forget(tmp)
    return matrix.means(), {**matrix.record(path.name), "sha256": sha256_file(path)}


def _publish(options: ConvertOptions, out_dir: Path, manifest: dict, console) -> None:
    """Upload artifacts + manifest + model card; a failed verification is never published."""
    from wildguard_lite.convert.model_card import push_to_hub

    if manifest.get("verification", {}).get("status") == "failed":
        raise WildGuardLiteError(
            f"not pushed to {options.push_to_hub}: verification failed (see "
            f"{out_dir / 'manifest.json'}); the files stay in {out_dir}"
        )
    with console.status(f"uploading to {options.push_to_hub}"):
        url = push_to_hub(out_dir, options.push_to_hub, options.token, options.accuracy_report)
    console.print(f"[green]pushed[/green] {url}")


def _convert_onnx(options: ConvertOptions, folder: Path, source_info: dict, out_dir: Path, base: str, console) -> dict:
    """The ONNX variants (convert/onnx_export.py); each artifact carries its own verification."""
    from wildguard_lite.convert.onnx_export import ONNX_QUANTS, OnnxQuantConfig, export_onnx

    quants = tuple(q for q in options.quants if q in ONNX_QUANTS)
    if not quants:
        raise InvalidInputError(f"no ONNX quant in --quant for --format onnx; choose from {', '.join(ONNX_QUANTS)}")
    started = time.perf_counter()
    artifacts, record = export_onnx(
        folder,
        out_dir,
        base,
        quants,
        options.onnx or OnnxQuantConfig(),
        verify=options.verify,
        force=options.force,
        threads=options.threads,
        console=console,
    )
    statuses = {a["verification"]["status"] for a in artifacts}
    status = "failed" if "failed" in statuses else "passed" if statuses == {"passed"} else "skipped"
    if status == "failed":
        console.print(
            "[bold red]an ONNX variant's logits disagree with transformers beyond its tolerance; "
            "see the artifacts' verification in manifest.json[/bold red]"
        )
    return update_manifest(
        out_dir,
        source_info,
        artifacts,
        {
            "verification": {"status": status, "per_artifact": True},
            "conversion": {"seconds": round(time.perf_counter() - started, 2), "peak_rss_bytes": _peak_rss(), **record},
            **options.extra,
        },
    )
