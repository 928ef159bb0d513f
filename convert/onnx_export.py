"""`convert --format onnx`: optimum export (fp32, KV cache) -> fp32/fp16/int8/int4 variants.

Each variant is a folder `{base}-onnx-{quant}/` holding `model.onnx` + `model.onnx.data` and the
source's `tokenizer.model`, `tokenizer_config.json` and `config.json`, so `wildguard_lite.load()`
needs nothing but that folder. optimum runs in a child process: torch's memory is returned
before the variants are written, and its peak RSS is measured on its own.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from wildguard_lite.defaults import DEFAULT_N_CTX
from wildguard_lite.errors import MissingDependencyError, WildGuardLiteError
from wildguard_lite.utils import publishable, python_command, sha256_file
from wildguard_lite.convert.tempfiles import forget, make_temp_dir, reap, register, spawn, temp_prefix
from wildguard_lite.convert.verify import available_bytes, compare_logits

ONNX_QUANTS = ("fp32", "fp16", "int8", "int4")
DEFAULT_ONNX_QUANTS = ("fp32", "int8", "int4")
DATA_FILE = "model.onnx.data"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "config.json")

# Peak RSS per parameter of each step, plus a fixed cost (torch, onnxruntime), measured on a
# 1.04B random-weight Mistral (README, "ONNX"): optimum's export 8.7 bytes/param (fp32 weights,
# the traced graph and the serialized proto alive at once); onnxruntime's dynamic int8
# quantizer 12.4 (it copies the fp32 model); int4 4.8; fp16 6.4; fp32 reuses the export's files.
STEP_BYTES_PER_PARAM = {"export": 8.5, "fp32": 0.0, "fp16": 6.5, "int8": 12.5, "int4": 5.0}
EXPORT_FIXED_BYTES = 1 << 30

# Max |logit difference| against transformers fp32, relative to the logits' scale, per variant.
# fp32 is the same arithmetic reordered; fp16 rounds weights to 11 bits; int8 quantizes
# activations dynamically as well as weights; int4 is weight-only with 16 levels per block.
TOLERANCE = {"fp32": 0.001, "fp16": 0.02, "int8": 0.1, "int4": 0.2}


@dataclass(frozen=True)
class OnnxQuantConfig:
    """How the quantized variants are made (defaults measured on the toy; README)."""

    # Block 128 and level 4 (int8 activations in the MatMulNBits kernel): on a 1.04B model,
    # 2 threads, block 128 processed prompts ~1.45x faster than 32 and level 4 decoded ~1.8x
    # faster than 0; on the toy every setting agreed with the reference on all labels.
    int4_block_size: int = 128
    int4_accuracy_level: int = 4
    int4_symmetric: bool = True
    int8_per_channel: bool = True

    def __post_init__(self):
        bs = self.int4_block_size
        if bs < 16 or bs & (bs - 1):
            raise WildGuardLiteError(f"int4 block size must be a power of two >= 16, got {bs}")
        if self.int4_accuracy_level not in (0, 1, 2, 3, 4):
            raise WildGuardLiteError(f"int4 accuracy level must be 0-4, got {self.int4_accuracy_level}")


def count_parameters(folder: Path) -> int:
    from wildguard_lite.convert.safetensors_io import list_tensors

    return sum(int(np.prod(r.shape)) for r in list_tensors(folder))


def estimate_memory(params: int, quants: tuple[str, ...]) -> tuple[int, str]:
    """Peak bytes of the hungriest step for these variants, and that step's name."""
    step = max(("export", *quants), key=lambda s: STEP_BYTES_PER_PARAM[s])
    return int(params * STEP_BYTES_PER_PARAM[step] + EXPORT_FIXED_BYTES), step


def check_export_memory(folder: Path, quants: tuple[str, ...], force: bool) -> dict:
    """Refuse before exporting when the estimated peak exceeds available memory (unless force)."""
    params = count_parameters(folder)
    need, step = estimate_memory(params, quants)
    have = available_bytes()
    record = {"parameters": params, "estimated_bytes": need, "peak_step": step, "available_bytes": have}
    if have and need > have and not force:
        what = "optimum's export" if step == "export" else f"the {step} quantization"
        raise WildGuardLiteError(
            f"the ONNX conversion needs about {need / 2**30:.1f} GiB of memory ({what}, "
            f"{params / 1e9:.2f}B parameters) "
            f"but {have / 2**30:.1f} GiB is available; use '--format gguf' (streams tensors, under 1 GiB), "
            "a bigger machine, or --force to try anyway"
        )
    return record


def _require_exporter() -> None:
    for module, extra in (
        ("onnx", "onnx"),
        ("onnxruntime", "onnx"),
        ("optimum", "onnx-export"),
        ("torch", "convert"),
        ("transformers", "convert"),
    ):
        if find_spec(module) is None:
            raise MissingDependencyError(f"{module} is not installed: pip install 'wildguard-lite[{extra}]'")


_EXPORT_SCRIPT = """
import sys, warnings
warnings.filterwarnings("ignore")
from optimum.exporters.onnx import main_export
main_export(sys.argv[1], output=sys.argv[2], task="text-generation-with-past", device="cpu",
            do_validation=False, trust_remote_code=False)
"""


def run_optimum_export(folder: Path, out: Path) -> dict:
    """optimum's export in a child process; returns its seconds and peak RSS. The child dies
    with this process (tempfiles.spawn), whatever kills it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = spawn(
        python_command("-c", _EXPORT_SCRIPT, str(folder), str(out)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _, stderr = proc.communicate()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        reap(proc)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0 or not (out / "model.onnx").is_file():
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        raise WildGuardLiteError(f"optimum's ONNX export failed: {lines[-1] if lines else f'exit {proc.returncode}'}")
    # ru_maxrss of children is the largest child so far: exact when this is the largest.
    return {"seconds": round(time.perf_counter() - t0, 2), "peak_rss_bytes": max(peak, before) * 1024}


def _save(model, folder: Path) -> None:
    import onnx

    onnx.save_model(
        model,
        str(folder / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=DATA_FILE,
        size_threshold=1024,
    )


def write_variant(exported: Path, dst: Path, quant: str, config: OnnxQuantConfig, scratch: Path) -> None:
    """One variant of the exported fp32 model into the empty folder `dst`."""
    import onnx

    if quant == "fp32":
        # optimum's files as they are: loading and re-saving would hold the weights twice.
        for path in exported.parent.iterdir():
            if path.name.startswith("model.onnx"):  # model.onnx and its external data, if any
                _link_or_copy(path, dst / path.name)
        return
    if quant == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        # keep_io_types: the runtime feeds float32 KV arrays whatever the weights are. Shape
        # inference serializes the whole proto, which fails past protobuf's 2 GB (~1B params).
        model = convert_float_to_float16(onnx.load(str(exported)), keep_io_types=True, disable_shape_infer=True)
    elif quant == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = scratch / "int8" / "model.onnx"
        tmp.parent.mkdir()
        logging.disable(logging.WARNING)  # its "consider pre-processing" hint goes to the root logger
        try:
            quantize_dynamic(
                str(exported),
                str(tmp),
                weight_type=QuantType.QInt8,
                per_channel=config.int8_per_channel,
                use_external_data_format=True,
            )
        finally:
            logging.disable(logging.NOTSET)
        model = onnx.load(str(tmp))
    elif quant == "int4":
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
        algo = DefaultWeightOnlyQuantConfig(
            block_size=config.int4_block_size,
            is_symmetric=config.int4_symmetric,
            accuracy_level=config.int4_accuracy_level,
        )
        quantizer = MatMulNBitsQuantizer(onnx.load(str(exported)), algo_config=algo)
        quantizer.process()
        model = quantizer.model.model
    else:
        raise WildGuardLiteError(f"unknown ONNX quant '{quant}'; choose from {', '.join(ONNX_QUANTS)}")
    _save(model, dst)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # same folder tree: no second copy on disk
    except OSError:
        shutil.copyfile(src, dst)


def _copy_tokenizer(source: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, dst / name)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place; an older one is removed only after the new one exists."""
    publishable(tmp)
    old = None
    if final.exists():
        old = register(final.with_name(temp_prefix(final.name) + "old"))
        os.replace(final, old)
    os.replace(tmp, final)
    forget(tmp)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        forget(old)


def _record(out_dir: Path, folder: Path, quant: str, config: OnnxQuantConfig, seconds: float) -> dict:
    files: dict[str, dict[str, Any]] = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.iterdir())
        if p.name not in TOKENIZER_FILES
    }
    record = {
        "file": str((folder / "model.onnx").relative_to(out_dir)),
        "format": "onnx",
        "quant": quant,
        "bytes": sum(f["bytes"] for f in files.values()),
        "sha256": files["model.onnx"]["sha256"],
        "files": files,
        "seconds": round(seconds, 2),
    }
    if quant == "int4":
        record["options"] = {k: v for k, v in asdict(config).items() if k.startswith("int4")}
    elif quant == "int8":
        record["options"] = {"per_channel": config.int8_per_channel, "dynamic_activations": True}
    return record


class _Reference:
    """transformers fp32, loaded once for all variants (or a reason why not)."""

    def __init__(self, folder: Path):
        self.folder, self.ref, self.reason = folder, None, None
        if find_spec("torch") is None or find_spec("transformers") is None:
            self.reason = "torch/transformers not installed (pip install 'wildguard-lite[convert]')"
            return
        need = count_parameters(folder) * 4 * 1.3
        if need > available_bytes():
            self.reason = (
                f"transformers fp32 needs ~{need / 2**30:.1f} GiB, {available_bytes() / 2**30:.1f} GiB available"
            )

    def get(self):
        if self.ref is None and self.reason is None:
            from wildguard_lite.reference import TransformersReference

            self.ref = TransformersReference(self.folder, device="cpu")
        return self.ref


def verify_variant(reference: _Reference, model: Path, quant: str, threads: int | None) -> dict:
    """Last-position logits at the first cue against transformers fp32; never raises on mismatch."""
    ref = reference.get()
    if ref is None:
        return {"status": "skipped", "reason": reference.reason}
    from wildguard_lite.backends.onnx import OnnxBackend
    from wildguard_lite.tokenization import load_tokenizer_from_folder

    ours = load_tokenizer_from_folder(model.parent)
    backend = OnnxBackend(model, n_ctx=DEFAULT_N_CTX, threads=threads)
    try:
        return compare_logits(ref, ours, backend, TOLERANCE[quant])
    finally:
        backend.close()


def export_onnx(
    folder: Path,
    out_dir: Path,
    base: str,
    quants: tuple[str, ...],
    config: OnnxQuantConfig,
    *,
    verify: bool = True,
    force: bool = False,
    threads: int | None = None,
    console=None,
) -> tuple[list[dict], dict]:
    """Export and write every variant; returns (artifacts, export record for the manifest)."""
    from rich.console import Console

    console = console or Console(stderr=True)
    _require_exporter()
    memory = check_export_memory(folder, quants, force)
    work = make_temp_dir(out_dir, f"{base}-onnx-work")  # removed on a kill, or by the next run
    artifacts: list[dict] = []
    reference = _Reference(folder) if verify else None
    try:
        with console.status("exporting to ONNX with optimum (fp32, KV cache)"):
            export = run_optimum_export(folder, work / "export")
        console.print(
            f"[green]exported[/green] fp32 graph in {export['seconds']:.1f} s, "
            f"peak RSS {export['peak_rss_bytes'] / 2**30:.2f} GiB"
        )
        for quant in quants:
            t0 = time.perf_counter()
            tmp = make_temp_dir(out_dir, f"{base}-onnx-{quant}")
            try:
                with console.status(f"writing ONNX {quant}"):
                    write_variant(work / "export" / "model.onnx", tmp, quant, config, work)
                    _copy_tokenizer(folder, tmp)
                seconds = time.perf_counter() - t0
                verification = (
                    {"status": "skipped", "reason": "--no-verify"}
                    if reference is None
                    else verify_variant(reference, tmp / "model.onnx", quant, threads)
                )
                final = out_dir / f"{base}-onnx-{quant}"
                _replace_dir(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            record = _record(out_dir, final, quant, config, seconds)
            record["verification"] = verification
            artifacts.append(record)
            style = {"passed": "green", "failed": "bold red"}.get(verification["status"], "yellow")
            console.print(
                f"[green]wrote[/green] {final}/ ({record['bytes'] / 2**20:.1f} MiB, {seconds:.1f} s), "
                f"[{style}]verification {verification['status']}[/{style}]"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        forget(work)
    return artifacts, {"export": {**export, "memory_check": memory, "exporter": "optimum (text-generation-with-past)"}}
