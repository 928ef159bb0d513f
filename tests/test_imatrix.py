"""convert --imatrix end to end on a tiny random checkpoint (torch; no trained toy needed): the
matrix is what it says, it is written and recorded, it makes the types that require it, and a
saved matrix gives the same file again."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console

from wildguard_lite.convert.pipeline import ConvertOptions, convert_checkpoint
from wildguard_lite.errors import InvalidInputError
from wildguard_lite.utils import sha256_file

pytestmark = pytest.mark.slow
QUIET = Console(quiet=True)
TINY = {
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "vocab_size": 8192,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from wildguard_lite.benchmarks.standin import build_standin
    from wildguard_lite.toy import build_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    return build_standin(root / "ckpt", build_tokenizer(root / "tok"), TINY)


def test_imatrix_is_the_mean_of_squared_inputs(tiny, tmp_path):
    import torch
    import transformers

    from wildguard_lite.convert.imatrix import calibration_rows, compute_imatrix
    from wildguard_lite.tokenization import load_tokenizer_from_folder

    cal = tmp_path / "cal.jsonl"
    cal.write_text('{"prompt": "How do I bake bread?"}\n{"prompt": "Hi", "response": "Hello there."}\n')
    rows, name = calibration_rows(cal)
    m = compute_imatrix(tiny, rows, name, threads=2)
    assert m.exchanges == 2 and name == "cal.jsonl"
    # Independently: the input of layer 0's q/k/v is input_layernorm(embeddings).
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.bfloat16)
    tok = load_tokenizer_from_folder(tiny)
    # The exchange, then the answer (no labels in the file: "no", or "n/a" for a prompt alone).
    answers = [["no", "n/a", "n/a"], ["no", "no", "no"]]
    ids = [tok.encode_exchange(r["prompt"], r["response"]) + tok.answer_ids(a) for r, a in zip(rows, answers)]
    with torch.inference_mode():
        x = torch.cat([model.model.layers[0].input_layernorm(model.model.embed_tokens(torch.tensor(i))) for i in ids])
    x = x.float()
    assert m.tokens == x.shape[0] == m.counts["blk.0.attn_q.weight"]
    expected = (x * x).mean(dim=0).numpy()
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"):
        np.testing.assert_allclose(m.means()[name], expected, rtol=2e-2, atol=1e-6)
    assert {f"blk.1.{k}.weight" for k in ("attn_output", "ffn_gate", "ffn_up", "ffn_down")} <= set(m.sums)
    assert m.sums["blk.1.ffn_down.weight"].shape == (768,) and "output.weight" in m.sums


def test_convert_with_imatrix(tiny, tmp_path, monkeypatch):
    import gguf

    import wildguard_lite
    from wildguard_lite.convert import imatrix

    monkeypatch.setattr(imatrix, "DEFAULT_CALIBRATION_ROWS", 16)  # the toy's calibration set, smaller

    with pytest.raises(InvalidInputError, match="iq3_xxs needs an importance matrix"):
        convert_checkpoint(
            ConvertOptions(source=str(tiny), out_dir=tmp_path / "no", quants=("iq3_xxs",), verify=False), console=QUIET
        )
    out = tmp_path / "with"
    manifest = convert_checkpoint(
        ConvertOptions(
            source=str(tiny),
            out_dir=out,
            quants=("f16", "iq4_nl", "iq3_xxs"),
            verify=False,
            name="tiny",
            imatrix="",
            threads=2,
        ),
        console=QUIET,
    )
    record = manifest["imatrix"]
    assert record["file"] == "tiny.imatrix.gguf" and record["dataset"] == "toy" and record["exchanges"] == 16
    assert record["sha256"] == sha256_file(out / "tiny.imatrix.gguf")
    files = {a["quant"]: a for a in manifest["artifacts"]}
    assert files["f16"]["file"] == "tiny-f16.gguf" and "imatrix" not in files["f16"]
    assert files["iq3_xxs"]["file"] == "tiny-iq3_xxs-imat.gguf" and files["iq3_xxs"]["imatrix"] == record["file"]
    assert json.loads((out / "manifest.json").read_text())["imatrix"] == record
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(out / "tiny-iq3_xxs-imat.gguf").tensors}
    assert types["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.IQ3_XXS
    with wildguard_lite.load(out / "tiny-iq3_xxs-imat.gguf", threads=2, n_ctx=512) as clf:
        result = clf.classify_one("How do I bake bread?")
    assert "scores" in result  # random weights: the verdict itself means nothing

    # The saved matrix again: the same bytes; without it, IQ4_NL quantizes differently.
    again = tmp_path / "again"
    convert_checkpoint(
        ConvertOptions(
            source=str(tiny),
            out_dir=again,
            quants=("iq4_nl", "iq3_xxs"),
            verify=False,
            name="tiny",
            imatrix=str(out / "tiny.imatrix.gguf"),
            threads=2,
        ),
        console=QUIET,
    )
    for q in ("iq4_nl", "iq3_xxs"):
        assert sha256_file(again / f"tiny-{q}-imat.gguf") == sha256_file(out / f"tiny-{q}-imat.gguf")
    plain = tmp_path / "plain"
    convert_checkpoint(
        ConvertOptions(source=str(tiny), out_dir=plain, quants=("iq4_nl",), verify=False, name="tiny", threads=2),
        console=QUIET,
    )
    assert (plain / "tiny-iq4_nl.gguf").stat().st_size == (out / "tiny-iq4_nl-imat.gguf").stat().st_size
    assert sha256_file(plain / "tiny-iq4_nl.gguf") != sha256_file(out / "tiny-iq4_nl-imat.gguf")


def test_ladder_report_and_recommend(tiny, tmp_path, capsys):
    """bench ladder over a convert folder, then recommend reading its report: a file that exists."""
    from wildguard_lite.cli import main

    out = tmp_path / "ladder"
    convert_checkpoint(
        ConvertOptions(source=str(tiny), out_dir=out, quants=("f16", "q8_0", "q4_0"), verify=False, name="t"),
        console=QUIET,
    )
    report = tmp_path / "ladder.json"
    argv = ["bench", "ladder", "--dir", str(out), "--report", str(report), "--cues-only", "--limit", "3"]
    assert main([*argv, "--prefill-tokens", "32", "--rounds", "1", "--threads", "2", "--n-ctx", "512"]) == 0
    data = json.loads(report.read_text())
    assert [f["file"] for f in data["files"]] == ["t-f16.gguf", "t-q8_0.gguf", "t-q4_0.gguf"]
    assert data["cpu"]["name"] and data["load_average_before"] and data["reference"].endswith("t-f16.gguf")
    by = {f["quant"]: f for f in data["files"]}
    assert by["f16"]["dp_max"] <= 0.02 and by["f16"]["cue_agreement"] == 1.0  # itself, other batch shapes
    assert all(len(f["prefill_tok_s_runs"]) == 2 and f["prefill_tok_s"] > 0 for f in data["files"])  # two passes
    assert by["q4_0"]["bytes"] < by["q8_0"]["bytes"] < by["f16"]["bytes"]
    assert all(f["peak_rss_bytes"] > f["bytes"] for f in data["files"])
    capsys.readouterr()
    assert main(["recommend", "--report", str(report), "--ram", "64", "--min-agreement", "0"]) == 0
    chosen = capsys.readouterr().out.splitlines()[0]
    assert chosen in {str(out / f["file"]) for f in data["files"]}
