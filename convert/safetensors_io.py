"""A tensor-at-a-time safetensors reader on numpy alone (bf16 included, no torch).

Streaming keeps conversion memory near one tensor, whatever the checkpoint size.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wildguard_lite.errors import ModelFileError

# safetensors dtype -> numpy dtype of the stored bits (bf16 is kept as raw uint16).
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


@dataclass(frozen=True)
class TensorRef:
    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    def load_raw(self) -> np.ndarray:
        """The stored bits (uint16 for bf16)."""
        count = int(np.prod(self.shape)) if self.shape else 1
        arr = np.fromfile(self.file, dtype=_DTYPES[self.dtype], count=count, offset=self.start)
        if arr.size != count:
            raise ModelFileError(f"{self.file}: truncated while reading tensor '{self.name}'")
        return arr.reshape(self.shape)

    def load_f32(self) -> np.ndarray:
        raw = self.load_raw()
        if self.dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float32, copy=False)


def _int_list(value, length: int | None = None) -> list[int] | None:
    """`value` as a list of non-negative ints, or None when it is not one."""
    if not isinstance(value, list) or (length is not None and len(value) != length):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return None
    return value


def _read_header(path: Path) -> list[TensorRef]:
    """The tensors of one file, after checking that every tensor's byte range matches its
    shape and dtype, lies inside the file and overlaps no other."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(size - 8, 100_000_000):
                raise ValueError(f"header length {n} is implausible for a {size}-byte file")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as exc:
        raise ModelFileError(f"{path}: not a valid safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: not a valid safetensors file (the header is not a JSON object)")
    base = 8 + n
    refs = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        where = f"{path}: tensor '{name}'"
        if not isinstance(info, dict):
            raise ModelFileError(f"{where}: header entry is not an object; the file is corrupt")
        dtype = info.get("dtype")
        if dtype not in _DTYPES:
            raise ModelFileError(f"{where} has dtype {dtype}; only F32, F16 and BF16 are supported")
        shape, offsets = _int_list(info.get("shape")), _int_list(info.get("data_offsets"), 2)
        if shape is None or offsets is None or offsets[0] > offsets[1]:
            raise ModelFileError(
                f"{where}: shape {info.get('shape')!r} or data_offsets "
                f"{info.get('data_offsets')!r} is malformed; the file is corrupt"
            )
        need = int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[dtype]).itemsize
        if offsets[1] - offsets[0] != need:
            raise ModelFileError(
                f"{where}: data_offsets span {offsets[1] - offsets[0]} bytes but shape {shape} "
                f"in {dtype} needs {need}; the file is corrupt"
            )
        start, end = base + offsets[0], base + offsets[1]
        if end > size:
            raise ModelFileError(f"{path}: truncated (tensor '{name}' ends at byte {end}, file has {size})")
        refs.append(TensorRef(name, path, dtype, tuple(shape), start, end))
    ordered = sorted(refs, key=lambda r: (r.start, r.end))
    for a, b in zip(ordered, ordered[1:]):
        if b.start < a.end:
            raise ModelFileError(
                f"{path}: tensors '{a.name}' and '{b.name}' overlap (bytes {b.start}-{a.end}); the file is corrupt"
            )
    return refs


def list_tensors(folder: Path) -> list[TensorRef]:
    """All tensors of a checkpoint folder (single file or sharded with an index)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if pickles:
            raise ModelFileError(
                f"{folder}: only pickle weights ({', '.join(pickles[:3])}); they can run code when loaded, "
                "so they are refused. Convert them to safetensors first (or use the checkpoint's safetensors revision)"
            )
        raise ModelFileError(f"{folder}: no *.safetensors weights found")
    refs: list[TensorRef] = []
    for file in files:
        refs.extend(_read_header(file))
    names = [r.name for r in refs]
    if len(set(names)) != len(names):
        raise ModelFileError(f"{folder}: a tensor appears in more than one safetensors file")
    return refs
