"""A laptop's budget: the quant ladder's refusals, the importance matrix, the KV cache type, the
library's one-app defaults, and `recommend` over a ladder report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wildguard_lite.cli.recommend import main as recommend_main
from wildguard_lite.cli.recommend import pick
from wildguard_lite.config import RuntimeConfig
from wildguard_lite.convert.imatrix import Imatrix, calibration_rows, check_imatrix, load_imatrix, save_imatrix
from wildguard_lite.convert.quantize import IMATRIX_REQUIRED, QUANTS, allowed_quants, check_quant
from wildguard_lite.defaults import DEFAULT_N_CTX, default_kv_tokens, kv_cell_bytes
from wildguard_lite.errors import InvalidInputError

TOY = {"hidden_size": 256, "intermediate_size": 768, "num_attention_heads": 4, "head_dim": 64, "num_hidden_layers": 2}
WILDGUARD = {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32}


def test_ladder_types_and_the_imatrix_they_need():
    assert {"iq4_nl", "iq4_xs", "iq3_m", "iq3_xxs", "iq2_m", "q4_0", "q4_k_s"} <= set(QUANTS)
    for q in IMATRIX_REQUIRED:
        with pytest.raises(InvalidInputError, match="needs an importance matrix.*--imatrix"):
            check_quant(q, WILDGUARD, has_imatrix=False)
        check_quant(q, WILDGUARD, has_imatrix=True)
    check_quant("iq3_m", WILDGUARD, has_imatrix=False)  # importance-weighted, but not required
    # Both WildGuard's and the toy's rows (4096/14336, 256/768) fill every type's blocks.
    assert allowed_quants(WILDGUARD) == allowed_quants(TOY) == tuple(QUANTS)
    assert set(allowed_quants(TOY, has_imatrix=False)) == set(QUANTS) - set(IMATRIX_REQUIRED)


def test_shapes_that_do_not_fill_the_blocks_are_refused():
    odd = {**TOY, "hidden_size": 96, "head_dim": 24}  # rows of 96: 32-value blocks fit, 256 do not
    with pytest.raises(InvalidInputError, match=r"blocks of 256 values.*rows have 96.*allow: q8_0, q5_0, q4_0, iq4_nl"):
        check_quant("iq4_xs", odd, has_imatrix=True)
    check_quant("iq4_nl", odd, has_imatrix=False)
    with pytest.raises(InvalidInputError, match="unknown GGUF quant 'iq1_s'"):
        check_quant("iq1_s", TOY, has_imatrix=True)


def test_kv_cell_bytes_at_7b_and_the_library_pool():
    assert kv_cell_bytes(32, 8, 128, "f16") == 128 * 1024  # 2 x 32 layers x 8 heads x 128 x 2 bytes
    assert kv_cell_bytes(32, 8, 128, "q8_0") == 68 * 1024  # 34 bytes per 32 values
    config = RuntimeConfig()
    assert config.slots <= 2 and config.kv_tokens is None and config.kv_type == "f16"
    assert default_kv_tokens(config.n_ctx, config.slots) == DEFAULT_N_CTX  # one context of cells
    assert default_kv_tokens(1024, 1) == default_kv_tokens(1024, 2) == 1024
    assert default_kv_tokens(1024, 3) == default_kv_tokens(1024, 8) == 2048  # more slots: serve's two contexts


def test_serve_keeps_its_own_slots_and_pool():
    from wildguard_lite.server.settings import ServeSettings

    s = ServeSettings(model=Path("m.gguf"))
    assert s.slots == 8 and s.workers == 8
    assert s.kv_pool_tokens == 2 * s.n_ctx
    assert ServeSettings(model=Path("m.gguf"), kv_tokens=5000).kv_pool_tokens == 5000


def test_kv_type_is_checked():
    assert RuntimeConfig(kv_type="q8_0").kv_type == "q8_0"
    with pytest.raises(InvalidInputError, match="unknown kv_type 'q4_0'"):
        RuntimeConfig(kv_type="q4_0")
    with pytest.raises(InvalidInputError, match="needs flash_attn"):
        RuntimeConfig(kv_type="q8_0", flash_attn=False)


def test_calibration_rows(tmp_path):
    rows, name = calibration_rows(None, limit=16)
    assert name == "toy" and len(rows) == 16 and all(isinstance(r["prompt"], str) for r in rows)
    assert all(len(r["answers"]) == 3 and set(r["answers"]) <= {"yes", "no", "n/a"} for r in rows)
    assert rows == calibration_rows(None, limit=16)[0]  # seeded
    good = tmp_path / "cal.jsonl"
    good.write_text('{"prompt": "hi"}\n\n{"prompt": "a", "response": "b", "prompt_harm_label": "harmful"}\n')
    assert calibration_rows(good)[0] == [{"prompt": "hi", "response": None}, {"prompt": "a", "response": "b"}]
    for text, message in [
        ('{"prompt": "hi"}\n{"prompt": 3}\n', r"cal.jsonl line 2: field 'prompt' must be a string"),
        ('{"prompt": "hi", "respones": "x"}\n', r"line 1: unknown field 'respones' \(did you mean 'response'\?\)"),
        ("{oops\n", r"line 1: invalid JSON"),
        ("\n", "no exchanges"),
    ]:
        good.write_text(text)
        with pytest.raises(InvalidInputError, match=message):
            calibration_rows(good)
    with pytest.raises(InvalidInputError, match="no such file"):
        calibration_rows(tmp_path / "missing.jsonl")


def _matrix(layers: int, hidden: int, inter: int) -> Imatrix:
    rng = np.random.default_rng(0)
    m = Imatrix(dataset="test", exchanges=3, tokens=30)
    for i in range(layers):
        for kind, n in (("attn_q", hidden), ("attn_k", hidden), ("attn_output", hidden), ("ffn_down", inter)):
            m.sums[f"blk.{i}.{kind}.weight"] = rng.random(n) * 30
            m.counts[f"blk.{i}.{kind}.weight"] = 30
    return m


def test_imatrix_file_round_trip_and_fit(tmp_path):
    pytest.importorskip("gguf", reason="the imatrix file is a GGUF: the convert extra")
    m = _matrix(2, 256, 768)
    save_imatrix(m, tmp_path / "m.imatrix.gguf")
    back = load_imatrix(tmp_path / "m.imatrix.gguf")
    assert back.exchanges == 3 and set(back.sums) == set(m.sums)
    for name in m.sums:
        assert back.counts[name] == 30
        np.testing.assert_allclose(back.means()[name], m.sums[name] / 30, rtol=1e-6)
    check_imatrix(back, TOY)
    with pytest.raises(
        InvalidInputError, match="does not fit this model: blk.0.attn_q.weight 256 columns, expected 4096"
    ):
        check_imatrix(back, WILDGUARD)
    (tmp_path / "x.gguf").write_bytes(b"not a gguf")
    with pytest.raises(InvalidInputError, match="x.gguf: not a readable GGUF"):
        load_imatrix(tmp_path / "x.gguf")


def _entry(name, gib, tok_s, agree, dp):
    return {
        "file": name,
        "path": f"/m/{name}",
        "quant": name.split(".")[0],
        "bytes": int(gib * 0.9 * 2**30),
        "peak_rss_bytes": int(gib * 2**30),
        "prefill_tok_s": tok_s,
        "verdict_agreement": agree,
        "cue_agreement": agree,
        "dp_mean": dp,
        "dp_max": dp * 3,
    }


REPORT = {
    "kind": "wildguard-lite ladder",
    "engine": "test",
    "cpu": {"name": "cpu", "simd": ["avx2"]},
    "threads": 2,
    "reference": "/m/f16.gguf",
    "files": [
        _entry("f16.gguf", 14.0, 9.0, 1.0, 0.0),
        _entry("q8_0.gguf", 7.9, 14.0, 1.0, 0.002),
        _entry("q4_k_m.gguf", 4.9, 17.0, 0.995, 0.01),
        _entry("iq4_nl.gguf", 4.6, 18.0, 0.995, 0.011),
        _entry("iq3_xxs.gguf", 3.4, 9.0, 0.97, 0.05),
    ],
}


def test_recommend_picks_the_closest_file_that_fits():
    best, reasons = pick(REPORT, 8)
    assert best["file"] == "q8_0.gguf"
    assert any(r.startswith("f16.gguf: peak RSS 14.00 GiB > 8 GiB") for r in reasons)
    assert pick(REPORT, 8, min_speed=17.5)[0]["file"] == "iq4_nl.gguf"
    assert pick(REPORT, 4.8)[0]["file"] == "iq4_nl.gguf"  # q4_k_m's 4.9 GiB does not fit
    best, reasons = pick(REPORT, 4)  # only iq3_xxs fits, and it disagrees too often
    assert best is None and any("iq3_xxs.gguf: agreement 0.9700 < 0.99" in r for r in reasons)
    assert pick(REPORT, 4, min_agreement=0.95)[0]["file"] == "iq3_xxs.gguf"


def test_recommend_cli(tmp_path, capsys):
    path = tmp_path / "ladder.json"
    path.write_text(json.dumps(REPORT))
    assert recommend_main(["--report", str(path), "--ram", "8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("/m/q8_0.gguf\n") and "peak RSS 7.90 GiB (budget 8)" in out and "passed over f16.gguf" in out
    assert recommend_main(["--report", str(path), "--ram", "2"]) == 1
    assert "no file in" in capsys.readouterr().out
    for args, message in [
        (["--ram", "0"], "--ram must be a positive number"),
        (["--ram", "nan"], "--ram must be a positive number"),
        (["--ram", "8", "--min-agreement", "2"], "--min-agreement must be between 0 and 1"),
    ]:
        assert recommend_main(["--report", str(path), *args]) == 2
        assert message in capsys.readouterr().err
    path.write_text(json.dumps({"artifacts": []}))
    assert recommend_main(["--report", str(path), "--ram", "8"]) == 2
    assert "not a ladder report" in capsys.readouterr().err
