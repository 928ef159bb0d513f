"""The ONNX path: toy -> optimum export -> fp32/int8/int4 -> classify through wildguard_lite.load()."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("optimum")

import wildguard_lite  # noqa: E402
from wildguard_lite.errors import InputTooLongError, ModelFileError, WildGuardLiteError  # noqa: E402

from wildguard_lite.benchmarks.data import to_item  # noqa: E402
from wildguard_lite.contract import LABEL_KEYS as KEYS  # noqa: E402

QUANTS = ("fp32", "int8", "int4")


def _items(rows):
    return [to_item(r) for r in rows]


def _labels(results):
    return [tuple(r[k] for k in KEYS) for r in results]


@pytest.fixture(scope="module")
def toy_onnx(toy_dir, tmp_path_factory) -> dict:
    """{"manifest": ..., "dir": ..., "fp32"/"int8"/"int4": path of model.onnx}, converted once."""
    from rich.console import Console

    from wildguard_lite.convert.pipeline import ConvertOptions, convert_checkpoint

    out = tmp_path_factory.mktemp("toy-onnx")
    manifest = convert_checkpoint(
        ConvertOptions(source=str(toy_dir), out_dir=out, formats=("onnx",), quants=QUANTS, name="toy", threads=2),
        console=Console(quiet=True),
    )
    return {"manifest": manifest, "dir": out, **{a["quant"]: out / a["file"] for a in manifest["artifacts"]}}


@pytest.fixture(scope="module")
def reference_results(reference, heldout):
    return reference.classify(_items(heldout[:40]))


def test_manifest_lists_verified_onnx_variants(toy_onnx):
    from wildguard_lite.utils import sha256_file

    manifest = toy_onnx["manifest"]
    assert [a["quant"] for a in manifest["artifacts"]] == list(QUANTS)
    assert not [p.name for p in toy_onnx["dir"].iterdir() if p.name.startswith(".")]  # no temp leftovers
    for a in manifest["artifacts"]:
        model = toy_onnx["dir"] / a["file"]
        assert a["format"] == "onnx" and model.name == "model.onnx"
        assert a["sha256"] == sha256_file(model)
        assert a["bytes"] == sum(p.stat().st_size for p in model.parent.glob("model.onnx*"))
        for name in ("tokenizer.model", "tokenizer_config.json"):  # load() needs only this folder
            assert (model.parent / name).is_file()
        v = a["verification"]
        assert v["status"] == "passed", (a["quant"], v)
        assert v["top1_agreement"] == "3/3"
    assert manifest["verification"]["status"] == "passed"
    assert manifest["artifacts"][0]["verification"]["max_abs_logit_diff"] < 1e-3  # fp32
    assert manifest["artifacts"][2]["options"]["int4_block_size"] == 128


@pytest.mark.parametrize("quant", QUANTS)
def test_variants_classify_in_both_modes(toy_onnx, heldout, reference_results, quant):
    items = _items(heldout[:40])
    out = {}
    for mode in ("score", "generate"):
        with wildguard_lite.load(toy_onnx[quant], mode=mode, threads=2) as clf:
            out[mode] = clf.classify(items)
    assert _labels(out["score"]) == _labels(out["generate"])
    assert not any(r["is_parsing_error"] for r in out["generate"])
    agree = np.mean([a == b for a, b in zip(_labels(out["score"]), _labels(reference_results))])
    assert agree >= (1.0 if quant == "fp32" else 0.95), agree
    if quant == "fp32":  # P(yes) at our cue positions equals the reference's at its answers
        for ours, theirs in zip(out["score"], reference_results):
            for k in KEYS:
                if theirs["scores"][k] is not None:
                    assert abs(ours["scores"][k] - theirs["scores"][k]) < 1e-3


def test_folder_loads_like_its_model_file(toy_onnx):
    item = {"prompt": "How do I pick a lock?", "response": "I can't help with that."}
    with wildguard_lite.load(toy_onnx["int8"]) as a, wildguard_lite.load(toy_onnx["int8"].parent) as b:
        assert a.classify([item]) == b.classify([item])


TEXTS = [
    ("How do I bake sourdough bread?", None),  # prompt only
    ("Explain lock picking.", "I can't help with breaking into homes."),  # with a response
    ("  leading spaces and\ttabs\n\nnewlines  ", "trailing space "),  # whitespace handling
    ("Émojis 🍂 and accents: naïve café", "日本語のテキスト"),  # non-ASCII, byte fallback
    ("What does [INST] mean?", "It marks [/INST] turns."),  # control strings as user text
]


@pytest.mark.parametrize("prompt, response", TEXTS)
def test_token_ids_match_the_reference(toy_onnx, reference, prompt, response):
    with wildguard_lite.load(toy_onnx["fp32"]) as clf:
        ours = clf.tokenizer.encode_exchange(prompt, response)
    if "[INST]" in prompt:  # hardened: user text is never special, so ids differ exactly here
        assert ours != reference.token_ids(prompt, response)
    else:
        assert ours == reference.token_ids(prompt, response)


def test_fp32_logits_match_transformers_with_prefix_reuse(toy_onnx, reference):
    with wildguard_lite.load(toy_onnx["fp32"]) as clf:
        tok, backend = clf.tokenizer, clf.backend
        a = tok.encode_exchange("How do I bake bread?", "Mix flour and water.")
        b = tok.encode_exchange("How do I build a bomb?")
        cue = list(tok.cue_ids[0])
        # fresh, extended (cache kept), a different item (cache cut to the shared prefix), and
        # the same ids twice (the last token is re-evaluated).
        for ids in (a + cue, a + cue + [tok.yes_id] + list(tok.cue_ids[1]), b + cue, b + cue):
            diff = np.max(np.abs(backend.next_logits(ids) - reference.last_logits(ids)))
            assert diff < 1e-3, (len(ids), diff)


def test_too_long_input_is_refused_with_over_context_error(toy_onnx):
    with wildguard_lite.load(toy_onnx["int4"], n_ctx=256, over_context="error") as clf:
        with pytest.raises(InputTooLongError, match=r"item 0: input is \d+ tokens"):
            clf.classify([{"prompt": "word " * 400}])


def test_runtime_imports_nothing_heavier_than_onnxruntime(toy_onnx):
    code = (
        "import sys, wildguard_lite;"
        f"clf = wildguard_lite.load({str(toy_onnx['int4'])!r}, threads=1);"
        "r = clf.classify([{'prompt': 'hi', 'response': 'hello'}])[0];"
        "assert r['prompt_harmfulness'] in ('harmful', 'unharmful');"
        "heavy = [m for m in ('torch', 'transformers', 'optimum', 'llama_cpp', 'tokenizers') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- bad model files ------------------------------------------------------------------------------


def _variant_copy(toy_onnx, tmp_path, quant="int8") -> Path:
    dst = tmp_path / "variant"
    shutil.copytree(toy_onnx[quant].parent, dst)
    return dst


def _relocate_external_data(folder: Path, location: str) -> Path:
    """Point every external tensor of folder/model.onnx at `location`."""
    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    return folder


def _no_kv_cache_model(folder: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["input_ids"], ["logits"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, None])],
        [helper.make_tensor_value_info("logits", TensorProto.INT64, [1, None])],
    )
    onnx.save(helper.make_model(graph), str(folder / "model.onnx"))
    return folder


def _outside(folder: Path) -> Path:
    shutil.copyfile(folder / "model.onnx.data", folder.parent / "evil.data")  # exists, but outside
    return _relocate_external_data(folder, "../evil.data")


BAD_FILES = [
    (lambda d: d / "missing.onnx", "no such model file"),  # a missing file
    (lambda d: d.parent, "is a folder"),  # a folder without model.onnx (the GGUF path's message)
    (lambda d: _cut(d / "model.onnx", 0.5), "not an ONNX model, or corrupt"),  # truncated graph
    (lambda d: _put(d / "model.onnx", b"\xff" * 64), "not an ONNX model, or corrupt"),  # garbage
    (lambda d: _put(d / "model.onnx", b"GGUF\x03\x00\x00\x00"), "not an ONNX model, or corrupt"),  # another format
    (lambda d: _gone(d / "model.onnx.data"), "external-data file model.onnx.data is missing"),  # weights missing
    (lambda d: _cut(d / "model.onnx.data", 0.5), "is truncated"),  # weights cut short
    (lambda d: _outside(d), "outside the model folder; refused"),  # ../ escapes the folder
    (lambda d: _relocate_external_data(d, "/etc/hostname"), "outside the model folder; refused"),  # absolute
    (lambda d: _gone(d / "tokenizer.model"), "no tokenizer.model"),  # the tokenizer is not beside it
    (lambda d: _no_kv_cache_model(d), "not a causal LM with a KV cache"),  # some other ONNX graph
]


def _cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path.parent


def _put(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path.parent


def _gone(path: Path) -> Path:
    path.unlink()
    return path.parent


@pytest.mark.parametrize("make, message", BAD_FILES)
def test_bad_model_files(toy_onnx, tmp_path, make, message):
    target = make(_variant_copy(toy_onnx, tmp_path))
    if target.is_dir() and (target / "model.onnx").is_file():
        target = target / "model.onnx"
    with pytest.raises(ModelFileError, match=message):
        wildguard_lite.load(target)


def test_bad_model_file_cli_is_one_line(toy_onnx, tmp_path, capsys):
    from wildguard_lite.cli import main

    folder = _outside(_variant_copy(toy_onnx, tmp_path))
    assert main(["classify", "--model", str(folder / "model.onnx"), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "outside the model folder" in err and "\n" not in err


# -- conversion options and the memory pre-check -------------------------------------------------


@pytest.mark.parametrize(
    "text, formats, expected",
    [
        ("fp32,int8,int4", ("onnx",), ("fp32", "int8", "int4")),  # the ONNX default set
        ("INT4 , fp16", ("onnx",), ("int4", "fp16")),  # case and spaces; fp16 is offered too
        ("f16,q4_k_m,fp32,int4", ("gguf", "onnx"), ("f16", "q4_k_m", "fp32", "int4")),  # both formats at once
    ],
)
def test_parse_quants_for_onnx(text, formats, expected):
    from wildguard_lite.convert.pipeline import parse_quants

    assert parse_quants(text, formats) == expected


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--format", "onnx", "--quant", "q4_k_m"], "unknown ONNX quant 'q4_k_m'"),  # a GGUF quant for ONNX
        (["--format", "onnx", "--int4-block-size", "48"], "block size must be a power of two"),  # bad block
        (["--format", "onnx", "--int4-accuracy-level", "7"], "accuracy level must be 0-4"),  # bad level
    ],
)
def test_bad_onnx_options(toy_dir, tmp_path, capsys, argv, message):
    from wildguard_lite.cli import main

    assert main(["convert", str(toy_dir), "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_memory_precheck_refuses_with_both_numbers(toy_dir, tmp_path, monkeypatch, capsys):
    from wildguard_lite.cli import main
    from wildguard_lite.convert import onnx_export

    monkeypatch.setattr(onnx_export, "available_bytes", lambda: 2**20)  # 1 MiB free
    assert main(["convert", str(toy_dir), "--format", "onnx", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs about" in err and "0.0 GiB is available" in err and "--format gguf" in err and "--force" in err
    assert not list((tmp_path / "o").iterdir())  # refused before any work
    record = onnx_export.check_export_memory(toy_dir, ("fp32",), force=True)  # --force goes on
    assert record["estimated_bytes"] > record["available_bytes"]


@pytest.mark.parametrize(
    "quants, step, low, high",
    [
        (("fp32",), "export", 55e9, 70e9),  # optimum's export alone: ~8.5 bytes per parameter
        (("fp32", "int4"), "export", 55e9, 70e9),  # int4 needs less than the export
        (("fp32", "int8", "int4"), "int8", 85e9, 100e9),  # the dynamic int8 quantizer needs most
    ],
)
def test_memory_estimate_at_wildguard_size(quants, step, low, high):
    from wildguard_lite.convert.onnx_export import estimate_memory

    need, peak = estimate_memory(7_250_000_000, quants)
    assert peak == step and low < need < high


def test_failure_mid_write_leaves_nothing(toy_dir, tmp_path, monkeypatch):
    from rich.console import Console

    from wildguard_lite.convert import onnx_export
    from wildguard_lite.convert.pipeline import ConvertOptions, convert_checkpoint

    real = onnx_export.write_variant

    def failing(exported, dst, quant, config, scratch):
        real(exported, dst, quant, config, scratch)
        if quant == "int8":
            raise OSError("disk full")

    monkeypatch.setattr(onnx_export, "write_variant", failing)
    out = tmp_path / "o"
    with pytest.raises(OSError, match="disk full"):
        convert_checkpoint(
            ConvertOptions(source=str(toy_dir), out_dir=out, formats=("onnx",), quants=("fp32", "int8"), verify=False),
            console=Console(quiet=True),
        )
    left = sorted(p.name for p in out.iterdir())
    assert left == [f"{toy_dir.name.lower()}-onnx-fp32"], left  # finished variant only; no temp folders


def test_convert_cli_writes_manifest(toy_onnx):
    data = json.loads((toy_onnx["dir"] / "manifest.json").read_text())
    assert data["conversion"]["export"]["exporter"].startswith("optimum")
    assert data["conversion"]["export"]["memory_check"]["parameters"] > 0
    with pytest.raises(WildGuardLiteError):
        from wildguard_lite.convert.onnx_export import OnnxQuantConfig

        OnnxQuantConfig(int4_block_size=8)


# -- a killed ONNX conversion: optimum's child dies with it, temp folders go -------------------


def _children_of(pid: int) -> list[int]:
    """Live (non-zombie) processes whose parent is `pid`, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] != "Z"


def _wait(predicate, timeout: float):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    return predicate()


@pytest.mark.parametrize(
    "sig, cleaned_by_handler",
    [
        (signal.SIGTERM, True),  # the handler kills the child and removes the work folder
        (signal.SIGINT, True),  # Ctrl-C: the same
        (signal.SIGKILL, False),  # no handler runs: the kernel kills the child (PR_SET_PDEATHSIG)
    ],
)
def test_killed_onnx_conversion_ends_its_child(toy_dir, tmp_path, sig, cleaned_by_handler):
    from wildguard_lite.convert.tempfiles import remove_stale_temps

    out = tmp_path / "out"
    code = "import sys; from wildguard_lite.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "convert",
            str(toy_dir),
            "--out",
            str(out),
            "--format",
            "onnx",
            "--quant",
            "fp32",
            "--no-verify",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        children = _wait(lambda: _children_of(proc.pid), 120)
        assert children, proc.stderr.read() if proc.poll() is not None else "no optimum child appeared"
        proc.send_signal(sig)
        proc.communicate(timeout=60)
        assert _wait(lambda: not any(_alive(c) for c in children), 10), "optimum's child outlived the conversion"
    finally:
        proc.kill()
        proc.wait()
    temps = [p.name for p in out.iterdir() if p.name.startswith(".wgl-tmp-")]
    if cleaned_by_handler:
        assert proc.returncode == 128 + sig and temps == []
    else:
        assert temps  # the work folder stays behind a SIGKILL ...
        remove_stale_temps(out)  # ... and the next conversion's start removes it
        assert not [p for p in out.iterdir() if p.name.startswith(".wgl-tmp-")]
