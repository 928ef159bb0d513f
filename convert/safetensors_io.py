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


def _read_header(path: Path) -> list[TensorRef]:
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                raise ValueError(f"header length {n} is implausible")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as exc:
        raise ModelFileError(f"{path}: not a valid safetensors file ({exc})") from None
    base = 8 + n
    size = path.stat().st_size
    refs = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype")
        if dtype not in _DTYPES:
            raise ModelFileError(f"{path}: tensor '{name}' has dtype {dtype}; only F32, F16 and BF16 are supported")
        start, end = (base + int(x) for x in info["data_offsets"])
        if end > size:
            raise ModelFileError(f"{path}: truncated (tensor '{name}' ends at byte {end}, file has {size})")
        refs.append(TensorRef(name, path, dtype, tuple(int(d) for d in info["shape"]), start, end))
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
