"""Pickle checkpoints (`pytorch_model.bin`, sharded `pytorch_model-*.bin` + index) without running code.

Only torch's restricted unpickler is used (`torch.load(weights_only=True)`): it rebuilds tensors,
plain containers and numbers, and refuses any other global (a custom class, `os.system`, ...)
before calling it. Files are memory-mapped where torch allows it (the zip format of torch >= 1.6)
and only one shard is open at a time, so memory stays near one shard, whatever the checkpoint size.

`checkpoint_tensors(folder)` is the single entry point for conversion: safetensors when present
(preferred), else the pickle shards.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from wildguard_lite.errors import ModelFileError, require
from wildguard_lite.convert.safetensors_io import TensorRef, list_tensors

PICKLE_SINGLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
# Pickle files of other layouts: named in the refusal, never loaded.
OTHER_PICKLES = (".pt", ".pth", ".ckpt", ".pkl")
# torch dtype name -> (safetensors-style dtype, numpy dtype of the stored bits); bf16 stays raw uint16.
_DTYPES = {"bfloat16": ("BF16", np.uint16), "float16": ("F16", np.float16), "float32": ("F32", np.float32)}


class ShardCache:
    """Keeps the state dict of one shard loaded (memory-mapped); opening another closes it."""

    def __init__(self):
        self.path: Path | None = None
        self.tensors: dict = {}

    def get(self, path: Path) -> dict:
        if self.path != path:
            self.tensors = {}  # drop the previous shard's mapping first
            self.tensors = load_state_dict(path)
            self.path = path
        return self.tensors

    def close(self) -> None:
        self.path, self.tensors = None, {}


@dataclass(frozen=True)
class PickleTensorRef:
    """A tensor inside a pickle shard; same reading interface as safetensors_io.TensorRef."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    cache: ShardCache

    def load_raw(self) -> np.ndarray:
        """The stored bits (uint16 for bf16), copied out of the mapping."""
        torch = require("torch", "convert")
        tensor = self.cache.get(self.file)[self.name]
        if self.dtype == "BF16":
            tensor = tensor.view(torch.int16)  # numpy has no bf16: keep the bits
        data = tensor.contiguous().numpy().copy()
        return data.view(np.uint16) if self.dtype == "BF16" else data

    def load_f32(self) -> np.ndarray:
        raw = self.load_raw()
        if self.dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float32, copy=False)


def _check_magic(path: Path) -> None:
    """torch.save writes a zip archive (torch >= 1.6) or a pickle; anything else (a text file, or
    a .bin linked to one) gets a clear refusal instead of whatever the unpickler trips on."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read it ({exc.strerror})") from None
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        link = f" (a link to {path.resolve()})" if path.is_symlink() else ""
        raise ModelFileError(
            f"{path}{link}: not a PyTorch checkpoint: it starts with {head!r}, not a zip archive "
            "or a pickle; download the checkpoint again"
        )


def load_state_dict(path: Path) -> dict:
    """A shard's tensors through torch's restricted unpickler only; refuses anything else."""
    torch = require("torch", "convert")
    _check_magic(path)
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            # Files from torch < 1.6 (not the zip format) cannot be memory-mapped: read them whole.
            if "zip" not in str(exc).lower() and "mmap" not in str(exc).lower():
                raise
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()
        detail = next(
            (line for line in reason if "Unsupported global" in line or "GLOBAL" in line), reason[0] if reason else ""
        )
        raise ModelFileError(
            f"{path}: refused: this pickle needs more than tensors to load ({detail.strip()}). It could run "
            "code, so it is never unpickled in full; convert it to safetensors in a trusted sandbox, or use "
            "a safetensors revision of the checkpoint"
        ) from None
    except Exception as exc:  # a damaged file trips the unpickler anywhere (KeyError, IndexError, ...)
        raise ModelFileError(
            f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise ModelFileError(
            f"{path}: expected a state dict (tensor name -> tensor), found {type(data).__name__} "
            "holding other objects; save the model's state_dict() or use safetensors"
        )
    return data


def pickle_shards(folder: Path) -> list[Path]:
    """The pickle weight files of a Hugging Face folder, in index order; [] if there are none."""
    index = folder / PICKLE_INDEX
    if index.is_file():
        files = index_shards(index)
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise ModelFileError(
                f"{index}: lists shards that are missing: {', '.join(missing[:3])}; download the complete checkpoint"
            )
        return [folder / f for f in files]
    if (folder / PICKLE_SINGLE).is_file():
        return [folder / PICKLE_SINGLE]
    return []


def index_shards(index: Path) -> list[str]:
    """The shard file names of an index, checked: each a .bin file name inside the checkpoint
    folder (as the hub manifest's names are), never a path out of it."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ModelFileError(f"{index}: not a valid shard index ({type(exc).__name__}: {str(exc)[:200]})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if (
        not isinstance(weight_map, dict)
        or not weight_map
        or not all(isinstance(name, str) and isinstance(file, str) for name, file in weight_map.items())
    ):
        got = type(weight_map).__name__ if isinstance(data, dict) and "weight_map" in data else "no 'weight_map'"
        raise ModelFileError(
            f"{index}: 'weight_map' must be an object mapping each tensor name to its shard's "
            f"file name (got {got}); download the checkpoint again"
        )
    files = list(dict.fromkeys(weight_map.values()))
    for file in files:
        parts = PurePosixPath(file).parts
        if (
            not file.endswith(".bin")
            or "\\" in file
            or "\0" in file
            or PurePosixPath(file).is_absolute()
            or ".." in parts
        ):
            raise ModelFileError(
                f"{index}: shard {file[:100]!r} is not a .bin file inside the checkpoint folder; "
                "an index names its shards by file name (pytorch_model-00001-of-00002.bin), "
                "so this one was refused unread"
            )
    return files


def list_pickle_tensors(folder: Path) -> list[PickleTensorRef]:
    """All tensors of the pickle shards, grouped by shard (so conversion opens each once)."""
    cache = ShardCache()
    refs: list[PickleTensorRef] = []
    for shard in pickle_shards(folder):
        state = load_state_dict(shard)
        for name, tensor in state.items():
            kind = str(tensor.dtype).removeprefix("torch.")
            if kind not in _DTYPES:
                raise ModelFileError(
                    f"{shard}: tensor '{name}' has dtype {kind}; only float32, float16 and bfloat16 are supported"
                )
            refs.append(PickleTensorRef(name, shard, _DTYPES[kind][0], tuple(tensor.shape), cache))
        del state
    names = [r.name for r in refs]
    if len(set(names)) != len(names):
        raise ModelFileError(f"{folder}: a tensor appears in more than one pickle shard")
    return refs


def checkpoint_tensors(folder: Path) -> list[TensorRef] | list[PickleTensorRef]:
    """Safetensors when the folder has any (preferred), else the pickle shards; else a clear refusal."""
    folder = Path(folder)
    if any(folder.glob("*.safetensors")):
        return list_tensors(folder)
    if pickle_shards(folder):
        return list_pickle_tensors(folder)
    others = sorted(p.name for p in folder.iterdir() if p.suffix in OTHER_PICKLES or p.suffix == ".bin")
    if others:
        raise ModelFileError(
            f"{folder}: pickle weights {', '.join(others[:3])} are not in the Hugging Face layout "
            f"({PICKLE_SINGLE}, or pytorch_model-*.bin with {PICKLE_INDEX}); save the model with "
            "save_pretrained, or as safetensors"
        )
    raise ModelFileError(f"{folder}: no weights found (*.safetensors, {PICKLE_SINGLE} or {PICKLE_INDEX})")
