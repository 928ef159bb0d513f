"""Benchmarks: dataset loading, metrics, and both bench commands on the toy (tiny sizes)."""

import json

import pytest

from wildguard_lite.benchmarks.accuracy import compare, f1, recommend
from wildguard_lite.benchmarks.data import load_rows
from wildguard_lite.cli import main
from wildguard_lite.errors import InvalidInputError

H, U = "harmful", "unharmful"


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ([H, H, U, U], [H, U, H, U], 0.5),  # tp 1, fp 1, fn 1
        ([H, H], [H, H], 1.0),  # perfect
        ([None, U], [H, U], 0.0),  # a missing prediction counts as negative
        ([H, U], [None, None], None),  # no gold labels: undefined
        ([U, U], [U, U], 0.0),  # no positives at all: 0 by convention
    ],
)
def test_f1(pred, gold, expected):
    assert f1(pred, gold, H) == expected


def _row(prompt_label, adversarial=False, response=None, refusal=None, harm=None):
    return {
        "prompt": "p",
        "response": response,
        "adversarial": adversarial,
        "prompt_harm_label": prompt_label,
        "response_refusal_label": refusal,
        "response_harm_label": harm,
        "subcategory": "x",
    }


def _res(p, r=None, h=None, scores=(0.9, None, None)):
    keys = ("prompt_harmfulness", "response_refusal", "response_harmfulness")
    return {
        "prompt_harmfulness": p,
        "response_refusal": r,
        "response_harmfulness": h,
        "is_parsing_error": False,
        "scores": dict(zip(keys, scores)),
    }


def test_compare_counts_agreement_flips_and_deltas():
    rows = [_row(H, True), _row(U, False), _row(H, False, "r", "refusal", U)]
    ref = [_res(H), _res(U, scores=(0.2, None, None)), _res(H, "refusal", U, (0.8, 0.9, 0.1))]
    ours = [
        _res(H, scores=(0.85, None, None)),
        _res(H, scores=(0.6, None, None)),
        _res(H, "refusal", U, (0.8, 0.7, 0.1)),
    ]
    out = compare(rows, ref, ours)
    assert out["agreement"]["prompt_harmfulness"] == pytest.approx(2 / 3, abs=1e-6)
    assert out["agreement"]["response_refusal"] == 1.0
    assert out["flipped"] == [
        {"index": 1, "task": "prompt_harmfulness", "reference": U, "ours": H, "p_yes_reference": 0.2, "p_yes_ours": 0.6}
    ]
    assert out["delta_p_yes"]["prompt_harmfulness"]["max"] == pytest.approx(0.4)
    assert out["f1"]["prompt_harmfulness"]["adversarial"] == 1.0
    assert out["f1"]["prompt_harmfulness"]["vanilla"] == pytest.approx(2 / 3, abs=1e-6)


def test_recommend_picks_smallest_meeting_target():
    arts = [
        {"model": "q8", "bytes": 8, "agreement": {"a": 1.0, "b": 0.995}},
        {"model": "q4", "bytes": 4, "agreement": {"a": 0.999, "b": 0.98}},
        {"model": "q6", "bytes": 6, "agreement": {"a": 0.992, "b": 0.991}},
    ]
    assert recommend(arts, 0.99)["model"] == "q6"
    assert recommend(arts, 0.999) is None


def test_dataset_formats_agree(heldout, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = heldout[:5]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    csv_path = tmp_path / "d.csv"
    import csv

    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
    assert load_rows(str(jsonl)) == load_rows(str(parquet)) == load_rows(str(csv_path))


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"response": "r"}', "needs a 'prompt' string"),  # no prompt
        ('{"prompt": "p", "prompt_harm_label": "toxic"}', "'prompt_harm_label' is 'toxic'"),  # unknown label
        ('{"prompt": "p"', "line 1: invalid JSON"),  # broken JSON
    ],
)
def test_dataset_bad_rows(tmp_path, line, message):
    path = tmp_path / "d.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(InvalidInputError, match=message):
        load_rows(str(path))


def test_bench_reference_then_accuracy(toy_dir, toy_gguf, tmp_path, capsys):
    ref = tmp_path / "ref.jsonl"
    assert (
        main(
            [
                "bench",
                "reference",
                "--model",
                str(toy_dir),
                "--dataset",
                str(toy_dir / "heldout.jsonl"),
                "--output",
                str(ref),
                "--limit",
                "12",
            ]
        )
        == 0
    )
    meta = json.loads(ref.read_text().splitlines()[0])["meta"]
    assert meta["device"] == "cpu" and meta["dtype"] == "float32" and "transformers" in meta["versions"]
    report = tmp_path / "acc.json"
    assert (
        main(
            [
                "bench",
                "accuracy",
                "--reference",
                str(ref),
                "--model",
                str(toy_gguf["q8_0"]),
                "--model",
                str(toy_gguf["q4_k_m"]),
                "--dataset",
                str(toy_dir / "heldout.jsonl"),
                "--limit",
                "12",
                "--report",
                str(report),
                "--target-agreement",
                "0.9",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    data = json.loads(report.read_text())
    assert [a["model"] for a in data["artifacts"]] == [str(toy_gguf["q8_0"]), str(toy_gguf["q4_k_m"])]
    for a in data["artifacts"]:
        assert set(a["agreement"]) == {"prompt_harmfulness", "response_refusal", "response_harmfulness"}
        assert all(0.0 <= v <= 1.0 for v in a["agreement"].values())
    assert data["recommendation"]["model"] == str(toy_gguf["q4_k_m"])
    assert report.with_suffix(".md").is_file() and (tmp_path / "acc-agreement.png").is_file()


def test_bench_accuracy_refuses_mismatched_reference(toy_dir, toy_gguf, tmp_path, capsys):
    ref = tmp_path / "ref.jsonl"
    ref.write_text('{"meta": {}}\n{"index": 0}\n')
    code = main(
        [
            "bench",
            "accuracy",
            "--reference",
            str(ref),
            "--model",
            str(toy_gguf["q8_0"]),
            "--dataset",
            str(toy_dir / "heldout.jsonl"),
            "--limit",
            "3",
            "--report",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 2 and "has 1 results but the dataset has 3 rows" in capsys.readouterr().err


def test_bench_speed(toy_gguf, tmp_path, capsys):
    report = tmp_path / "speed.json"
    assert (
        main(
            [
                "bench",
                "speed",
                "--model",
                str(toy_gguf["q4_k_m"]),
                "--report",
                str(report),
                "--threads",
                "1",
                "--prompt-only",
                "2",
                "--full",
                "1",
                "--full-tokens",
                "200",
            ]
        )
        == 0
    )
    entry = json.loads(report.read_text())["artifacts"][0]
    for part in ("score", "generate_baseline", "limit"):
        assert set(entry[part]) == {"prompt_only", "full_exchange"}
    assert entry["generate_baseline_same_labels"] == "3/3"  # the baseline says what score mode says
    assert entry["peak_rss_bytes"] > 0 and entry["bytes"] == toy_gguf["q4_k_m"].stat().st_size
    assert set(entry["targets"]) >= {"speedup_prompt_only", "rss_over_file"}


def test_bench_standin_trains_only_a_tokenizer(monkeypatch, tmp_path, capsys):
    """`bench standin` without --tokenizer trains the toy's tokenizer (seconds), never the toy
    model (minutes): ensure_toy must not be called."""
    import wildguard_lite.toy
    import wildguard_lite.toy.build
    from wildguard_lite.benchmarks import standin

    def no_toy(*args, **kwargs):
        raise AssertionError("bench standin built the toy model")

    seen = {}

    def record(out, tokenizer, config=None, seed=0, progress=None):
        seen["pieces"] = (tokenizer / "tokenizer.model").stat().st_size
        seen["config"] = (tokenizer / "tokenizer_config.json").is_file()
        out.mkdir()
        (out / "config.json").write_text("{}")
        return out

    for module in (wildguard_lite.toy, wildguard_lite.toy.build):  # the name and its re-export
        monkeypatch.setattr(module, "ensure_toy", no_toy)
    monkeypatch.setattr(standin, "build_standin", record)
    assert main(["bench", "standin", "--out", str(tmp_path / "standin"), "--layers", "1"]) == 0
    assert seen["pieces"] > 0 and seen["config"]


def test_toy_tokenizer_alone_equals_the_toys(toy_dir, tmp_path):
    from wildguard_lite.toy import build_tokenizer

    folder = build_tokenizer(tmp_path / "tok")
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        assert (folder / name).read_bytes() == (toy_dir / name).read_bytes(), name


def test_standin_shape_converts_and_runs(tmp_path):
    """The stand-in builder at a tiny size: padded vocab, bf16 safetensors, convert, classify."""
    for module, extra in (("google.protobuf", "convert"), ("safetensors", "convert"), ("llama_cpp", "gguf")):
        pytest.importorskip(module, reason=f"the [{extra}] extra is not installed")
    import wildguard_lite
    from rich.console import Console

    from wildguard_lite.benchmarks.standin import build_standin
    from wildguard_lite.convert.pipeline import ConvertOptions, convert_checkpoint
    from wildguard_lite.toy import build_tokenizer

    small = {
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "vocab_size": 2048,
    }
    folder = build_standin(tmp_path / "standin", build_tokenizer(tmp_path / "tokenizer"), small)
    manifest = convert_checkpoint(
        ConvertOptions(source=str(folder), out_dir=tmp_path / "gguf", quants=("q8_0",), verify=False),
        Console(quiet=True),
    )
    with wildguard_lite.load(tmp_path / "gguf" / manifest["artifacts"][0]["file"], threads=1) as clf:
        assert clf.tokenizer.vocab_size == 2048
        result = clf.classify_one("hello", "world")
    # Random weights rarely put yes/no first at the cue: then, as greedy generation, a parse error.
    assert result["prompt_harmfulness"] in ("harmful", "unharmful") or result["is_parsing_error"]
    assert set(result) == {
        "prompt_harmfulness",
        "response_refusal",
        "response_harmfulness",
        "is_parsing_error",
        "scores",
    }


def test_bench_contention_on_the_toy(toy_gguf, tmp_path, capsys):
    # The benchmark's plumbing (no timing is asserted): each setting runs, with and without the
    # competitor, and the report names the threads the default chose.
    report = tmp_path / "contention.json"
    code = main(
        [
            "bench",
            "contention",
            "--model",
            str(toy_gguf["q8_0"]),
            "--report",
            str(report),
            "--settings",
            "default,1",
            "--items",
            "2",
        ]
    )
    assert code == 0
    data = json.loads(report.read_text())
    assert [(r["setting"], r["competitor"]) for r in data["rows"]] == [
        ("default", True),
        ("default", False),
        ("1", True),
        ("1", False),
    ]
    assert all(r["items"] == 2 and r["mean_s"] > 0 for r in data["rows"])
    assert [r["threads"] for r in data["rows"] if r["setting"] == "1"] == [1, 1]
    assert min(r["over_best"] for r in data["rows"] if r["competitor"]) == 1.0
    assert report.with_suffix(".md").read_text().startswith("| setting |")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--settings", "fast"], "unknown setting 'fast'"),  # not a setting
        (["--items", "0"], "--items must be at least 1"),  # nothing to time
    ],
)
def test_bench_contention_bad_options(tmp_path, capsys, args, message):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    assert main(["bench", "contention", "--model", str(model), "--report", str(tmp_path / "r.json"), *args]) == 2
    assert message in capsys.readouterr().err


def test_forced_answers_keep_the_engines_signature():
    """`bench concurrent-streams --force-answer` wraps logits_at; the engine passes its interrupt
    positionally (a wrapper without it failed on the first check)."""
    import numpy as np

    from wildguard_lite.benchmarks.concurrent_streams import ForcedAnswers

    class Engine:
        def logits_at(self, ids, positions, interrupt=None):
            self.interrupt = interrupt
            return [np.zeros(4) for _ in positions]

    engine = Engine()
    ForcedAnswers(engine, 2)
    rows = engine.logits_at([1, 2, 3], [1, 2], "stop")
    assert engine.interrupt == "stop" and [int(np.argmax(r)) for r in rows] == [2, 2]

    from types import SimpleNamespace

    from wildguard_lite.benchmarks.cancel import YesNoOnly

    engine = Engine()
    YesNoOnly(SimpleNamespace(backend=engine, tokenizer=SimpleNamespace(yes_id=1, no_id=3)))
    rows = engine.logits_at([1, 2, 3], [2], "stop")
    assert engine.interrupt == "stop" and rows[0][1] == rows[0][3] == 1e4
