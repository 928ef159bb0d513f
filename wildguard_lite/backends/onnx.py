"""onnxruntime engine: a raw InferenceSession over a causal LM exported with its KV cache.

The model takes `input_ids`, `attention_mask`, `position_ids` and `past_key_values.N.key/value`
([batch, kv_heads, past, head_dim]) and returns `logits` and `present.N.key/value`. The
present arrays of the last call are kept and cut to the common token prefix of the next one,
so only new tokens are evaluated. No optimum, torch or transformers at run time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ModelFileError, require
from ..defaults import default_threads
from ..config import check_threads
from .base import Backend, check_positions, common_prefix_length

MODEL_FILE = "model.onnx"
_PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)$")
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def resolve_model_path(path: str | os.PathLike) -> Path:
    """`model.onnx` itself, or the folder that holds it."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file")
    if not path.is_file():
        raise ModelFileError(f"{path}: not a file")
    return path


def _tensors(graph):
    """Every TensorProto of a graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def check_model_file(path: Path):
    """Parse the graph (not its weights) and check every external-data reference before
    onnxruntime opens anything: it must stay inside the model folder, exist and be long
    enough. Returns the ModelProto without weights."""
    onnx = require("onnx", "onnx")
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelFileError(f"{path}: not an ONNX model, or corrupt ({type(exc).__name__})") from None
    if not model.graph.node:
        raise ModelFileError(f"{path}: not an ONNX model, or corrupt (empty graph)")
    _check_layout(path, [i.name for i in model.graph.input], [o.name for o in model.graph.output])
    folder = path.parent.resolve()
    needed: dict[Path, int] = {}
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = (folder / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(folder):
            raise ModelFileError(
                f"{path}: tensor '{tensor.name}' points to external data '{location}' outside the model folder; refused"
            )
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        needed[target] = max(needed.get(target, 0), end)
    for target, end in needed.items():
        if not target.is_file():
            raise ModelFileError(f"{path}: its external-data file {target.name} is missing (expected in {folder})")
        if target.stat().st_size < end:
            raise ModelFileError(
                f"{path}: external-data file {target.name} is truncated ({target.stat().st_size} bytes, needs {end})"
            )
    return model


def _check_layout(path: Path, inputs: list[str], outputs: list[str]) -> list[tuple[int, str]]:
    """A causal LM with a KV cache: returns its (layer, key|value) past inputs, in order."""
    past = sorted((int(m.group(1)), m.group(2)) for m in map(_PAST.match, inputs) if m)
    problem = None
    if not {"input_ids", "attention_mask"} <= set(inputs) or "logits" not in outputs:
        problem = "inputs input_ids/attention_mask and output logits"
    elif not past or any(f"present.{n}.{kind}" not in outputs for n, kind in past):
        problem = "past_key_values.N.key/value inputs with present.N.* outputs"
    if problem:
        raise ModelFileError(
            f"{path}: not a causal LM with a KV cache (needs {problem}); "
            "export it with 'wildguard-lite convert --format onnx'"
        )
    return past


class OnnxBackend(Backend):
    def __init__(self, path: str | os.PathLike, *, n_ctx: int, threads: int | None):
        path = resolve_model_path(path)
        check_threads(threads)
        check_model_file(path)
        ort = require("onnxruntime", "onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only; warnings about unused initializers are noise
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeException types
            raise ModelFileError(f"{path}: onnxruntime could not load this model ({_first_line(exc)})") from None
        self._layout(path)
        self.n_ctx = n_ctx
        self._evaluated: list[int] = []
        self._past: list[np.ndarray] | None = None

    def _layout(self, path: Path) -> None:
        """Check the inputs/outputs are a causal LM with a KV cache, and read its shapes."""
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name: o for o in self._session.get_outputs()}
        past = _check_layout(path, list(inputs), list(outputs))
        self._past_names = [f"past_key_values.{n}.{kind}" for n, kind in past]
        self._present_names = [f"present.{n}.{kind}" for n, kind in past]
        first = inputs[self._past_names[0]]
        self._kv_dtype = _DTYPES.get(first.type, np.float32)
        _, kv_heads, _, head_dim = first.shape
        if not isinstance(kv_heads, int) or not isinstance(head_dim, int):
            raise ModelFileError(f"{path}: KV cache inputs have no static head shape ({first.shape})")
        self._kv_shape = (kv_heads, head_dim)
        self._has_positions = "position_ids" in inputs
        vocab = outputs["logits"].shape[-1]
        if not isinstance(vocab, int):
            raise ModelFileError(f"{path}: logits have no static vocabulary size ({outputs['logits'].shape})")
        self.n_vocab = vocab
        self._outputs = ["logits", *self._present_names]

    def _empty_past(self) -> list[np.ndarray]:
        shape = (1, self._kv_shape[0], 0, self._kv_shape[1])
        return [np.zeros(shape, dtype=self._kv_dtype) for _ in self._past_names]

    def next_logits(self, ids: Sequence[int]) -> np.ndarray:
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("next_logits needs at least one token")
        if len(ids) > self.n_ctx:
            raise ValueError(f"{len(ids)} tokens exceed the context of {self.n_ctx}")
        # Keep the cache of the common prefix; at least one token is evaluated for logits.
        keep = min(common_prefix_length(self._evaluated, ids), len(ids) - 1)
        return np.asarray(self._run(ids, keep)[0, -1], dtype=np.float32)

    def logits_at(self, ids: Sequence[int], positions: Sequence[int]) -> list[np.ndarray]:
        """Logits at `positions` of `ids` from one session run (the graph returns every
        position's logits)."""
        ids = [int(i) for i in ids]
        positions = check_positions(ids, positions)
        if len(ids) > self.n_ctx:
            raise ValueError(f"{len(ids)} tokens exceed the context of {self.n_ctx}")
        keep = min(common_prefix_length(self._evaluated, ids), positions[0])
        logits = self._run(ids, keep)
        return [np.asarray(logits[0, p - keep], dtype=np.float32) for p in positions]

    def _run(self, ids: list[int], keep: int) -> np.ndarray:
        """Evaluate ids[keep:] on the cache of ids[:keep]; returns logits [1, new, vocab]."""
        if self._past is None or keep == 0:
            past = self._empty_past()
        elif keep < len(self._evaluated):
            past = [np.ascontiguousarray(p[:, :, :keep]) for p in self._past]
        else:
            past = self._past
        new = np.asarray([ids[keep:]], dtype=np.int64)
        feed = {"input_ids": new, "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
        if self._has_positions:
            feed["position_ids"] = np.arange(keep, len(ids), dtype=np.int64)[None, :]
        feed.update(zip(self._past_names, past))
        # Drop the old state first: a failed run must not leave a cache that disagrees with ids.
        self._evaluated, self._past = [], None
        logits, *present = self._session.run(self._outputs, feed)
        self._evaluated, self._past = ids, present
        self.tokens_evaluated += len(ids) - keep
        return logits

    def close(self) -> None:
        self._session = None
        self._past = None
        self._evaluated = []


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
