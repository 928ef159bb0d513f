"""Pickle checkpoints: loaded through torch's restricted unpickler only, tensor by tensor."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

from wildguard_lite.errors import ModelFileError  # noqa: E402
from wildguard_lite.convert.gguf_export import write_gguf  # noqa: E402
from wildguard_lite.convert.pickle_io import checkpoint_tensors, load_state_dict  # noqa: E402
from wildguard_lite.convert.safetensors_io import list_tensors  # noqa: E402

TOKENIZER_FILES = ("config.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


class Payload:
    """Runs a shell command when unpickled by a full unpickler."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Custom:
    """A plain custom class: needs a global that is not a tensor type."""

    def __init__(self):
        self.value = 1


def _zip_pickle(path: Path, obj) -> None:
    torch.save(obj, path)


def _legacy_pickle(path: Path, obj) -> None:
    torch.save(obj, path, _use_new_zipfile_serialization=False)


def _raw_pickle(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj))


@pytest.mark.parametrize(
    "writer, make",
    [
        # torch's zip format with an os.system reduce beside a real tensor
        (_zip_pickle, lambda m: {"w": torch.zeros(2), "x": Payload(m)}),
        # the pre-1.6 (non-zip, not memory-mappable) format with the same payload
        (_legacy_pickle, lambda m: {"w": torch.zeros(2), "x": Payload(m)}),
        # a bare pickle (not made by torch.save at all)
        (_raw_pickle, lambda m: Payload(m)),
        # a custom class instance, harmless but more than tensors
        (_zip_pickle, lambda m: {"w": torch.zeros(2), "cfg": Custom()}),
    ],
)
def test_pickle_needing_more_than_tensors_is_refused_never_run(tmp_path, writer, make):
    marker = tmp_path / "executed"
    path = tmp_path / "pytorch_model.bin"
    writer(path, make(marker))
    with pytest.raises(ModelFileError, match="refused|not a readable") as err:
        load_state_dict(path)
    assert not marker.exists(), "the payload ran"
    assert str(path) in str(err.value)


def test_non_tensor_values_are_refused(tmp_path):
    # Allowed by the restricted unpickler, but not a state dict of tensors.
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.zeros(2), "step": 3}, path)
    with pytest.raises(ModelFileError, match="state dict"):
        load_state_dict(path)


def _write_bin_twin(toy_dir: Path, out: Path, shards: int) -> None:
    """The toy's safetensors weights rewritten as pickle shards (+ index when sharded)."""
    out.mkdir()
    for name in TOKENIZER_FILES:
        if (toy_dir / name).is_file():
            shutil.copyfile(toy_dir / name, out / name)
    refs = list_tensors(toy_dir)
    groups = [refs[i::shards] for i in range(shards)]
    weight_map = {}
    for k, group in enumerate(groups):
        fname = "pytorch_model.bin" if shards == 1 else f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
        state = {}
        for ref in group:
            raw = ref.load_raw()
            if ref.dtype == "BF16":
                state[ref.name] = torch.from_numpy(raw.view(np.int16).copy()).view(torch.bfloat16)
            else:
                state[ref.name] = torch.from_numpy(raw.copy())
            weight_map[ref.name] = fname
        torch.save(state, out / fname)
    if shards > 1:
        (out / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _tensors(path: Path) -> dict[str, tuple]:
    reader = gguf.GGUFReader(path)
    return {t.name: (t.tensor_type, tuple(t.shape), np.asarray(t.data).tobytes()) for t in reader.tensors}


@pytest.mark.parametrize("shards", [1, 3])  # a single pytorch_model.bin; three shards with an index
def test_bin_checkpoint_converts_identically_to_its_safetensors_twin(toy_dir, tmp_path, shards):
    twin = tmp_path / "bin"
    _write_bin_twin(toy_dir, twin, shards)
    assert not list(twin.glob("*.safetensors"))
    write_gguf(toy_dir, tmp_path / "st.gguf", "f16")
    write_gguf(twin, tmp_path / "bin.gguf", "f16")
    ours, theirs = _tensors(tmp_path / "st.gguf"), _tensors(tmp_path / "bin.gguf")
    assert ours.keys() == theirs.keys() and len(ours) > 0
    for name in ours:
        assert ours[name] == theirs[name], name


def test_safetensors_preferred_when_both_exist(toy_dir, tmp_path):
    # A hostile pickle beside safetensors is never opened.
    folder = tmp_path / "both"
    shutil.copytree(toy_dir, folder)
    marker = tmp_path / "executed"
    _zip_pickle(folder / "pytorch_model.bin", {"x": Payload(marker)})
    refs = checkpoint_tensors(folder)
    assert refs and all(r.file.suffix == ".safetensors" for r in refs)
    write_gguf(folder, tmp_path / "out.gguf", "f16")
    assert not marker.exists()


@pytest.mark.parametrize(
    "files, message",
    [
        # a shard listed in the index is missing
        (
            {"pytorch_model.bin.index.json": json.dumps({"weight_map": {"a": "pytorch_model-00001-of-00002.bin"}})},
            "missing",
        ),
        # a pickle not in the Hugging Face layout
        ({"model.pt": ""}, "not in the Hugging Face layout"),
        # nothing at all
        ({}, "no weights found"),
    ],
)
def test_unusable_folders_say_why(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ModelFileError, match=message):
        checkpoint_tensors(tmp_path)


def _index(weight_map) -> dict:
    return {"pytorch_model.bin.index.json": json.dumps({"weight_map": weight_map})}


def _linked_to_text(folder: Path) -> None:
    (folder.parent / "notes.txt").write_text("hello, not weights\n")
    os.symlink(folder.parent / "notes.txt", folder / "pytorch_model-00001-of-00001.bin")
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"weight_map": {"w": "pytorch_model-00001-of-00001.bin"}})
    )


def _outside_shard(folder: Path) -> None:
    (folder.parent / "outside").mkdir()
    torch.save({"w": torch.zeros(2)}, folder.parent / "outside" / "x.bin")
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"w": "../outside/x.bin"}}))


INDEX_ROWS = [
    # a shard outside the folder: was read and converted, exit 0
    (_outside_shard, r"shard '\.\./outside/x\.bin' is not a \.bin file inside the checkpoint folder"),
    # an absolute path: /etc/passwd was opened (then IndexError)
    (_index({"w": "/etc/passwd"}), r"shard '/etc/passwd' is not a \.bin file inside the checkpoint folder"),
    # weight_map a list: was AttributeError
    (_index(["pytorch_model-00001-of-00001.bin"]), r"'weight_map' must be an object .* \(got list\)"),
    # weight_map an integer: was AttributeError
    (_index(3), r"'weight_map' must be an object .* \(got int\)"),
    # nested values: was TypeError (unhashable)
    (
        _index({"w": {"file": "x.bin"}}),
        r"'weight_map' must be an object mapping each tensor name to its shard's file name",
    ),
    # no weight_map at all: was KeyError's bare message
    ({"pytorch_model.bin.index.json": "{}"}, r"\(got no 'weight_map'\)"),
    # an index nested 100,000 deep: was RecursionError
    (
        {"pytorch_model.bin.index.json": '{"weight_map": ' + "[" * 100_000 + "]" * 100_000 + "}"},
        r"not a valid shard index \(RecursionError",
    ),
    # a shard linked to a text file: was KeyError: 101 from the unpickler
    (
        _linked_to_text,
        r"pytorch_model-00001-of-00001\.bin \(a link to .*notes\.txt\): not a PyTorch checkpoint: "
        r"it starts with b'hello, not weigh'",
    ),
]


@pytest.mark.parametrize("setup, message", INDEX_ROWS, ids=[f"index-{i}" for i in range(len(INDEX_ROWS))])
def test_bad_shard_indexes_are_refused(tmp_path, setup, message):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    if callable(setup):
        setup(folder)
    else:
        for name, text in setup.items():
            (folder / name).write_text(text)
    with pytest.raises(ModelFileError, match=message):
        checkpoint_tensors(folder)
