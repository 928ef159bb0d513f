"""convert: toy -> GGUF, the manifest, hub resolution offline, and bad input."""

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from wildguard_lite.convert.hub import resolve_source
from wildguard_lite.utils import sha256_file
from wildguard_lite.convert.pipeline import ConvertOptions, convert_checkpoint, parse_quants
from wildguard_lite.errors import InvalidInputError, ModelFileError, WildGuardLiteError

QUIET = Console(quiet=True)


def test_manifest_lists_verified_artifacts(toy_gguf):
    manifest = toy_gguf["manifest"]
    assert [a["quant"] for a in manifest["artifacts"]] == ["f16", "q8_0", "q4_k_m"]
    for a in manifest["artifacts"]:
        path = toy_gguf["dir"] / a["file"]
        assert a["format"] == "gguf" and a["bytes"] == path.stat().st_size
        assert a["sha256"] == sha256_file(path)
    sizes = [a["bytes"] for a in manifest["artifacts"]]
    assert sizes[0] > sizes[1] > sizes[2]
    assert manifest["template_version"] == "wildguard-1.0.1"
    assert manifest["tools"]["gguf"] and manifest["tools"]["llama-cpp-python"]
    v = manifest["verification"]
    assert v["status"] == "passed", v
    assert v["max_abs_logit_diff"] <= v["tolerance"]
    # no temp files left behind
    assert not [p for p in toy_gguf["dir"].iterdir() if p.name.startswith(".")]


def test_gguf_metadata_and_tensors(toy_gguf, toy_dir):
    import gguf

    reader = gguf.GGUFReader(toy_gguf["f16"])
    assert reader.fields["general.architecture"].contents() == "llama"
    assert "tokenizer.chat_template" not in reader.fields  # never a model-file template
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "output.weight", "blk.0.attn_q.weight", "output_norm.weight"} <= names
    norm = next(t for t in reader.tensors if t.name == "output_norm.weight")
    assert norm.tensor_type == gguf.GGMLQuantizationType.F32  # norms stay f32


@pytest.mark.parametrize(
    "text, expected",
    [
        ("f16,q8_0,q4_k_m", ("f16", "q8_0", "q4_k_m")),  # the default set
        (" Q4_K_M , q4_k_m ", ("q4_k_m",)),  # case, spaces and duplicates
        ("bf16,q6_k,q5_k_m,q4_0", ("bf16", "q6_k", "q5_k_m", "q4_0")),  # the rest of the list
    ],
)
def test_parse_quants(text, expected):
    assert parse_quants(text) == expected


@pytest.mark.parametrize("text", ["q4_k_x", "", "int4"])
def test_parse_quants_rejects(text):
    with pytest.raises(InvalidInputError):
        parse_quants(text)


def _copy_toy(toy_dir, dst: Path, weights=True) -> Path:
    shutil.copytree(toy_dir, dst, ignore=None if weights else shutil.ignore_patterns("*.safetensors"))
    return dst


def test_pickle_weights_refused(toy_dir, tmp_path):
    src = _copy_toy(toy_dir, tmp_path / "pickled", weights=False)
    (src / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelFileError, match="pickle"):
        convert_checkpoint(ConvertOptions(source=str(src), out_dir=tmp_path / "out", verify=False), QUIET)


def test_other_architecture_refused(toy_dir, tmp_path):
    src = _copy_toy(toy_dir, tmp_path / "gpt2")
    config = json.loads((src / "config.json").read_text())
    config["architectures"], config["model_type"] = ["GPT2LMHeadModel"], "gpt2"
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="not supported"):
        convert_checkpoint(ConvertOptions(source=str(src), out_dir=tmp_path / "out", verify=False), QUIET)


def test_truncated_safetensors_refused(toy_dir, tmp_path):
    src = _copy_toy(toy_dir, tmp_path / "trunc")
    path = src / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        convert_checkpoint(ConvertOptions(source=str(src), out_dir=tmp_path / "out", verify=False), QUIET)


def test_output_folder_not_creatable(toy_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(WildGuardLiteError, match="cannot create the output folder"):
        convert_checkpoint(ConvertOptions(source=str(toy_dir), out_dir=blocker / "sub", verify=False), QUIET)


def test_failure_mid_write_leaves_nothing(toy_dir, tmp_path, monkeypatch):
    import wildguard_lite.convert.pipeline as pipeline

    def boom(*args, **kwargs):
        raise WildGuardLiteError("simulated quantizer failure")

    monkeypatch.setattr(pipeline, "quantize", boom)
    out = tmp_path / "out"
    with pytest.raises(WildGuardLiteError, match="simulated"):
        convert_checkpoint(ConvertOptions(source=str(toy_dir), out_dir=out, quants=("q8_0",), verify=False), QUIET)
    assert list(out.iterdir()) == []  # no temp file, no partial artifact, no manifest


def test_unknown_format_refused(toy_dir, tmp_path):
    with pytest.raises(InvalidInputError, match="format"):
        convert_checkpoint(ConvertOptions(source=str(toy_dir), out_dir=tmp_path, formats=("tflite",)), QUIET)


def test_bf16_source_converts_losslessly(toy_dir, tmp_path):
    """WildGuard ships bf16 safetensors: bf16 -> bf16 GGUF copies the bits exactly."""
    import gguf
    from safetensors.numpy import load_file

    src = _copy_toy(toy_dir, tmp_path / "bf16")
    tensors = load_file(src / "model.safetensors")
    # Round to bf16 bits by hand (numpy has no bf16): keep the high 16 bits.
    bits = {k: (v.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16) for k, v in tensors.items()}
    _write_bf16_safetensors(src / "model.safetensors", bits)
    manifest = convert_checkpoint(
        ConvertOptions(source=str(src), out_dir=tmp_path / "out", quants=("bf16",), verify=False), QUIET
    )
    reader = gguf.GGUFReader(tmp_path / "out" / manifest["artifacts"][0]["file"])
    emb = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert np.array_equal(
        np.asarray(emb.data).view(np.uint16).reshape(-1), bits["model.embed_tokens.weight"].reshape(-1)
    )


def _write_bf16_safetensors(path: Path, tensors: dict) -> None:
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + b"".join(blobs))


# -- hub ids, offline: a Hugging Face cache laid out by hand -----------------------------------


def _fake_hf_cache(root: Path, repo: str, commit: str, src: Path) -> None:
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"):
        os.symlink(src / f, snap / f)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)


def test_hub_id_resolves_from_cache_offline(toy_dir, tmp_path, monkeypatch, request):
    commit = "0123456789abcdef0123456789abcdef01234567"
    _fake_hf_cache(tmp_path / "hub", "allenai/wildguard", commit, toy_dir)
    # Imported before the environment changes: huggingface_hub reads it once at import, and a
    # first import here would leave the module offline for every later test.
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    # huggingface_hub caches its HTTP session, built offline here: drop it after this test.
    from huggingface_hub.utils import reset_sessions

    request.addfinalizer(reset_sessions)
    folder, info = resolve_source("allenai/wildguard", revision=commit)
    assert folder.name == commit and (folder / "config.json").is_file()
    assert info == {"repo": "allenai/wildguard", "revision": commit, "commit": commit}
    with pytest.raises(WildGuardLiteError, match="HF_HUB_OFFLINE"):
        resolve_source("allenai/not-cached", revision="main")


@pytest.mark.parametrize(
    "source, revision, message",
    [
        ("./definitely/missing", None, "no such folder"),  # not a folder, not a hub id
        ("a/b/c", None, "no such folder"),  # three parts: not a repo id
    ],
)
def test_bad_sources(source, revision, message):
    with pytest.raises(WildGuardLiteError, match=message):
        resolve_source(source, revision)


def test_revision_on_local_folder_refused(toy_dir):
    with pytest.raises(InvalidInputError, match="hub ids only"):
        resolve_source(str(toy_dir), "main")


# -- checkpoints that cannot make a working file: refused before any output ------------------


def _edit_config(src: Path, **changes) -> Path:
    config = json.loads((src / "config.json").read_text())
    config.update(changes)
    (src / "config.json").write_text(json.dumps(config))
    return src


def _edit_tensors(src: Path, edit) -> Path:
    """Rewrite model.safetensors after `edit(dict of numpy arrays)`."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(src / "model.safetensors")
    edit(tensors)
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    return src


def _edit_header(src: Path, edit) -> Path:
    """Rewrite the safetensors JSON header with `edit(header)`, the data bytes unchanged."""
    path = src / "model.safetensors"
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])
    return src


def _shrink_shape(header):
    header["model.layers.0.mlp.up_proj.weight"]["shape"][0] -= 1  # offsets now span more than the shape


def _overlap(header):
    a, b = header["model.layers.0.self_attn.k_proj.weight"], header["model.layers.0.self_attn.v_proj.weight"]
    b["data_offsets"] = list(a["data_offsets"])  # same size, same bytes


def _past_end(header):
    entry = max((v for k, v in header.items() if k != "__metadata__"), key=lambda v: v["data_offsets"][1])
    size = entry["data_offsets"][1] - entry["data_offsets"][0]
    entry["data_offsets"] = [entry["data_offsets"][0] + size, entry["data_offsets"][1] + size]


def _transpose(tensors):
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.ascontiguousarray(
        tensors["model.layers.0.self_attn.k_proj.weight"].T
    )


def _nan(tensors):
    tensors["model.layers.1.mlp.down_proj.weight"][0, 0] = np.nan


BAD_CHECKPOINTS = [
    (lambda s: _edit_tensors(s, lambda t: t.pop("lm_head.weight")), "no lm_head.weight"),  # untied, no output layer
    (lambda s: _edit_tensors(s, _transpose), "has shape [256, 128] but config.json implies [128, 256]"),  # wrong shape
    (
        lambda s: _edit_tensors(s, lambda t: t.pop("model.layers.1.mlp.down_proj.weight")),
        "1 tensor(s) missing",
    ),  # a layer tensor gone
    (lambda s: _edit_config(s, num_hidden_layers=3), "missing for the 3 layers"),  # config claims more layers
    (lambda s: _edit_config(s, num_hidden_layers=1), "does not have: model.layers.1"),  # extra layer tensors
    (lambda s: _edit_config(s, num_hidden_layers=0), "must be a positive integer"),  # llama.cpp aborts on 0 layers
    (lambda s: _edit_config(s, num_key_value_heads=3), "not a multiple of num_key_value_heads"),  # GQA mismatch
    (
        lambda s: _edit_tensors(s, lambda t: t.update(extra=np.zeros(4, np.float32))),
        "does not have: extra",
    ),  # stray tensor
    (lambda s: _edit_header(s, _shrink_shape), "data_offsets span"),  # offsets disagree with shape x dtype
    (lambda s: _edit_header(s, _overlap), "overlap"),  # two tensors share bytes
    (lambda s: _edit_header(s, _past_end), "truncated"),  # offsets beyond the end of the file
    (
        lambda s: _edit_header(s, lambda h: h["model.norm.weight"].update(data_offsets=[8, 4])),
        "malformed",
    ),  # end < start
    (lambda s: _edit_header(s, lambda h: h["model.norm.weight"].update(shape=[-256])), "malformed"),  # negative dim
    (lambda s: _write(s / "model.safetensors", (2**40).to_bytes(8, "little") + b"{}"), "implausible"),  # huge header
    (lambda s: _write(s / "tokenizer.model", b"\x00garbage" * 64), "not a SentencePiece model"),  # garbage tokenizer
    (lambda s: _edit_config(s, vocab_size=2048), "pieces but config.json says vocab_size 2048"),  # wrong tokenizer
    (
        lambda s: _write(s / "tokenizer_config.json", json.dumps({"added_tokens_decoder": {"3": {}}})),
        "malformed added token",
    ),  # a malformed tokenizer config
    (lambda s: _edit_tensors(s, _nan), "holds NaN or infinite values"),  # a corrupt weight, found while writing
]


def _write(path: Path, data) -> Path:
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
    return path.parent


@pytest.mark.parametrize("make, message", BAD_CHECKPOINTS)
def test_bad_checkpoints_are_refused(toy_dir, tmp_path, capsys, make, message):
    from wildguard_lite.cli import main

    src = make(_copy_toy(toy_dir, tmp_path / "src"))
    out = tmp_path / "out"
    assert main(["convert", str(src), "--out", str(out), "--quant", "f16,q8_0", "--no-verify"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err, err
    assert not out.exists() or list(out.iterdir()) == []  # no file, not even a temp


@pytest.mark.parametrize(
    "keep_lm_head",
    [
        False,  # tied and no lm_head.weight: the output layer is the embedding matrix
        True,  # tied, and a stale lm_head.weight beside it: transformers ignores it, and so do we
    ],
)
def test_tied_embeddings_convert_and_verify(toy_dir, tmp_path, keep_lm_head):
    import gguf

    def tie(tensors):
        if keep_lm_head:
            tensors["lm_head.weight"] = tensors["lm_head.weight"] * 0.5
        else:
            del tensors["lm_head.weight"]

    src = _edit_tensors(_edit_config(_copy_toy(toy_dir, tmp_path / "tied"), tie_word_embeddings=True), tie)
    manifest = convert_checkpoint(ConvertOptions(source=str(src), out_dir=tmp_path / "out", quants=("f32",)), QUIET)
    assert manifest["verification"]["status"] == "passed", manifest["verification"]
    reader = gguf.GGUFReader(tmp_path / "out" / manifest["artifacts"][0]["file"])
    assert "output.weight" not in {t.name for t in reader.tensors}  # llama.cpp reuses token_embd


# -- written tensors and verification logits must be finite -----------------------------------


@pytest.mark.parametrize(
    "out_type, source_bf16, value, message",
    [
        ("f32", False, np.nan, "holds NaN or infinite values"),  # f32 copies NaN straight through
        ("bf16", False, np.inf, "holds NaN or infinite values"),  # f32 -> bf16 keeps inf
        ("bf16", True, np.nan, "holds NaN or infinite values"),  # bf16 -> bf16 copies the bits
        ("f16", False, np.nan, "holds NaN or infinite values"),  # NaN is not an f16 overflow
        ("f16", False, 1e6, "overflows f16; convert with --quant bf16"),  # finite source, too big for f16
    ],
)
def test_non_finite_tensors_are_refused(toy_dir, tmp_path, out_type, source_bf16, value, message):
    from safetensors.numpy import load_file

    src = _copy_toy(toy_dir, tmp_path / "src")
    tensors = load_file(src / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.weight"][3, 5] = value
    if source_bf16:
        bits = {k: (v.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16) for k, v in tensors.items()}
        _write_bf16_safetensors(src / "model.safetensors", bits)
    else:
        from safetensors.numpy import save_file

        save_file(tensors, src / "model.safetensors")
    out = tmp_path / "out"
    with pytest.raises(ModelFileError, match=message):
        convert_checkpoint(ConvertOptions(source=str(src), out_dir=out, quants=(out_type,), verify=False), QUIET)
    assert list(out.iterdir()) == []


class _QueuedLogits:
    """A fake reference, tokenizer and backend in one: fixed ids, logits from a queue."""

    cue_ids = ((7,),)

    def __init__(self, logits):
        self.logits = list(logits)

    def token_ids(self, prompt, response=None):
        return [1, 2, 3]

    encode_exchange = token_ids

    def last_logits(self, ids):
        return self.logits.pop(0)

    next_logits = last_logits


FINE = np.linspace(-5, 5, 32, dtype=np.float32)


@pytest.mark.parametrize(
    "ours, status, reason",
    [
        (np.full(32, np.nan, np.float32), "failed", "32 NaN/infinite logits"),  # all NaN: max() used to keep 0
        (np.where(np.arange(32) == 4, np.inf, FINE).astype(np.float32), "failed", "1 NaN/infinite"),  # one inf
        (FINE + 0.001, "passed", None),  # within tolerance
        (FINE + 1.0, "failed", None),  # finite but far off
    ],
)
def test_verification_fails_on_non_finite_logits(ours, status, reason):
    from wildguard_lite.convert.verify import VERIFY_ITEMS, compare_logits

    n = len(VERIFY_ITEMS)
    record = compare_logits(_QueuedLogits([FINE] * n), _QueuedLogits([]), _QueuedLogits([ours] * n), 0.01)
    assert record["status"] == status, record
    if reason:
        assert reason in record["reason"] and "exported model" in record["reason"]


def test_non_finite_reference_fails_verification():
    from wildguard_lite.convert.verify import VERIFY_ITEMS, compare_logits

    n = len(VERIFY_ITEMS)
    bad = np.full(32, np.nan, np.float32)
    record = compare_logits(_QueuedLogits([bad] * n), _QueuedLogits([]), _QueuedLogits([bad] * n), 0.01)
    assert record["status"] == "failed" and "transformers reference" in record["reason"]


# -- CLI options, file modes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--format", "tflite"], "unknown --format 'tflite'; choose from gguf, onnx"),  # not a GGUF quant error
        (["--format", "gguf,tflite", "--quant", "f16"], "unknown --format 'tflite'"),  # one bad name of two
        (["--format", " , "], "--format is empty"),  # nothing given
        (["--quant", "int4"], "unknown GGUF quant 'int4'"),  # an ONNX quant for GGUF
    ],
)
def test_bad_convert_options(toy_dir, tmp_path, capsys, argv, message):
    from wildguard_lite.cli import main

    assert main(["convert", str(toy_dir), "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err


@pytest.mark.parametrize(
    "mask, mode",
    [
        (0o022, 0o644),  # the usual umask: readable by a server running as another user
        (0o027, 0o640),  # a stricter umask is honoured, not widened
    ],
)
def test_outputs_get_the_umask_mode(toy_dir, tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        convert_checkpoint(ConvertOptions(source=str(toy_dir), out_dir=tmp_path, quants=("f16",), verify=False), QUIET)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes and set(modes.values()) == {mode}, modes  # manifest.json and the GGUF


# -- killed conversions: temp files removed, leftovers of killed runs cleaned at start --------


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _stale_layout(folder: Path, alive_pid: int) -> dict[str, bool]:
    """name -> whether remove_stale_temps must remove it."""
    dead = _dead_pid()
    entries = {
        f".wgl-tmp-{dead}-toy-f16.x1.gguf": True,  # a killed run's GGUF temp
        f".wgl-tmp-{dead}-toy-onnx-work.x2": True,  # a killed run's ONNX work folder (with files)
        f".wgl-tmp-{dead}-manifest.json.x3.tmp": True,  # a killed run's manifest temp
        f".wgl-tmp-{alive_pid}-toy-q8_0.x4.gguf": False,  # a running conversion's temp: never touched
        ".toy-f16.abc.gguf.tmp": False,  # not our naming scheme: not ours to judge
        ".wgl-tmp-notapid-x": False,  # malformed: left alone
        "toy-f16.gguf": False,  # a finished artifact
    }
    for name in entries:
        if "work" in name:
            (folder / name).mkdir()
            (folder / name / "model.onnx").write_bytes(b"x")
        else:
            (folder / name).write_bytes(b"x")
    return entries


def test_remove_stale_temps(tmp_path):
    import subprocess
    import sys

    from wildguard_lite.convert.tempfiles import remove_stale_temps

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        entries = _stale_layout(tmp_path, sleeper.pid)
        removed = remove_stale_temps(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sorted(removed) == sorted(n for n, gone in entries.items() if gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, gone in entries.items() if not gone)


def _start_convert(args: list[str]):
    import subprocess
    import sys

    code = "import sys; from wildguard_lite.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, "convert", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(predicate, proc, timeout: float = 120.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"the conversion ended (exit {proc.returncode}) before the kill: {proc.stderr.read()}")
        time.sleep(0.01)
    pytest.fail("timed out waiting for the conversion")


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".wgl-tmp-")) if folder.exists() else []


@pytest.mark.parametrize(
    "sig",
    [
        signal.SIGTERM,  # `kill PID`, a service manager stopping the job
        signal.SIGINT,  # Ctrl-C
        signal.SIGHUP,  # the terminal closed
    ],
)
def test_killed_gguf_conversion_leaves_no_temp_files(toy_dir, tmp_path, sig):
    out = tmp_path / "out"
    # Verification keeps the f16 temp file open for seconds: the kill lands mid-conversion.
    proc = _start_convert([str(toy_dir), "--out", str(out), "--quant", "f16,q8_0"])
    _wait_for(lambda: _temps(out), proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert f"interrupted by {signal.Signals(sig).name}" in err
    assert _temps(out) == []


def test_sigkilled_conversion_is_cleaned_by_the_next_run(toy_dir, tmp_path):
    out = tmp_path / "out"
    proc = _start_convert([str(toy_dir), "--out", str(out), "--quant", "f16,q8_0"])
    left = _wait_for(lambda: _temps(out), proc)
    proc.kill()  # SIGKILL: no handler runs, the temp file stays
    proc.wait()
    assert _temps(out) == left
    convert_checkpoint(ConvertOptions(source=str(toy_dir), out_dir=out, quants=("f16",), verify=False), QUIET)
    assert _temps(out) == []
