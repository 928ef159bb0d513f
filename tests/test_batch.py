"""Batch jobs: streaming input, prefix-ordered windows, results in input order, resume, bad rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import pytest

from wildguard_lite.batch import classify_file
from wildguard_lite.errors import InvalidInputError, WildGuardLiteError
from wildguard_lite.config import RuntimeConfig
from wildguard_lite.runtime import Classifier
from wildguard_lite.tokenization import load_tokenizer_from_folder

from wildguard_lite.benchmarks.batch import EchoBackend, HashClassifier, eval_layout  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer(toy_dir):
    return load_tokenizer_from_folder(toy_dir)


def fake_classifier(tokenizer, n_ctx=4096):
    return Classifier(EchoBackend(tokenizer, n_ctx), tokenizer, RuntimeConfig(n_ctx=n_ctx))


def write_jsonl(path, items):
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_prefix_order_same_results_in_input_order_fewer_tokens(tokenizer, tmp_path):
    items = eval_layout(12, 5)
    src = write_jsonl(tmp_path / "in.jsonl", items)
    expected = fake_classifier(tokenizer).classify(items)
    runs = {}
    for order in ("file", "prefix"):
        clf = fake_classifier(tokenizer)
        out = tmp_path / f"{order}.jsonl"
        runs[order] = classify_file(clf, src, out, window=len(items), order=order)
        rows = read_jsonl(out)
        assert [r["index"] for r in rows] == list(range(len(items)))
        assert [{k: v for k, v in r.items() if k not in ("index", "item_sha256")} for r in rows] == expected
    prefix = runs["prefix"]
    # Sorted by token ids, each shared prefix is evaluated once: the engine runs exactly the
    # prefix tree's tokens plus each item's cues and answers (no duplicates here).
    cues = [len(c) for c in tokenizer.cue_ids]
    cue_tokens = sum(cues[0] if "response" not in it else sum(cues) + 2 for it in items)
    assert prefix.tokens_evaluated == prefix.tokens_unique + cue_tokens
    assert prefix.tokens_evaluated < runs["file"].tokens_evaluated
    assert prefix.tokens_input == runs["file"].tokens_input == sum(len(tokenizer.encode_exchange(it["prompt"], it.get("response"))) for it in items)


def test_first_results_are_written_before_the_input_is_read(tokenizer, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"p{i}"} for i in range(500)])
    seen = []
    classify_file(fake_classifier(tokenizer), src, tmp_path / "out.jsonl", window=16,
                  progress=lambda report: seen.append(report.rows))
    assert seen[0] <= 16 and len(seen) == 500


@pytest.mark.parametrize(
    "name, content, policy, message",
    [
        # a CSV row with more cells than the header: an error naming its line, never a cut response
        ("in.csv", 'prompt,response\nok,fine\nhi, there,hello\n', "stop", r"in.csv line 3: 3 cells but the header has 2 columns"),
        # the same row under on_bad_row=record: an error record, the job goes on
        ("in.csv", 'prompt,response\nok,fine\nhi, there,hello\n', "record", r"in.csv line 3: 3 cells"),
        # broken JSON after a good line
        ("in.jsonl", '{"prompt": "ok"}\n{"prompt": "x"\n', "stop", r"in.jsonl line 2: invalid JSON"),
        # a lone surrogate escape is not text
        ("in.jsonl", '{"prompt": "ok"}\n{"prompt": "\\ud800"}\n', "record", r"line 2: field 'prompt' is not valid text"),
        # invalid UTF-8 on one JSONL line
        ("in.jsonl", b'{"prompt": "ok"}\n{"prompt": "\xff"}\n', "record", r"line 2: not UTF-8 text"),
        # too long for the context: refused by the classifier, nothing truncated
        ("in.jsonl", '{"prompt": "ok"}\n{"prompt": "' + "word " * 400 + '"}\n', "stop", r"line 2: input is \d+ tokens but the context holds 512"),
        # a CSV row with no prompt cell
        ("in.csv", 'response,prompt\nonly a response\n', "record", r"in.csv line 2: no 'prompt' cell"),
    ],
)
def test_bad_rows(tokenizer, tmp_path, name, content, policy, message):
    src = tmp_path / name
    src.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    out = tmp_path / "out.jsonl"
    clf = fake_classifier(tokenizer, n_ctx=512)
    if policy == "stop":
        with pytest.raises(InvalidInputError, match=message):
            classify_file(clf, src, out)
        assert not out.exists()
        kept = read_jsonl(out.with_name("out.jsonl.partial"))
        assert [r["index"] for r in kept] == [0] and "error" not in kept[0]  # the rows before it are kept
    else:
        report = classify_file(clf, src, out, on_bad_row="record")
        rows = read_jsonl(out)
        bad = [r for r in rows if r.get("error")]
        assert report.errors == len(bad) == 1 and len(rows) == report.rows
        assert __import__("re").search(message, bad[0]["error"]), bad[0]["error"]
        assert bad[0]["prompt_harmfulness"] is None and bad[0]["scores"]["prompt_harmfulness"] is None


def test_csv_with_bom_and_quoted_commas(tokenizer, tmp_path):
    # Spreadsheet programs write a UTF-8 BOM before the header.
    src = tmp_path / "in.csv"
    src.write_bytes("\ufeffprompt,response,id\n\"hi, there\",\"hello, you\",a1\nplain,,\n".encode("utf-8"))
    out = tmp_path / "out.jsonl"
    classify_file(fake_classifier(tokenizer), src, out)
    rows = read_jsonl(out)
    direct = fake_classifier(tokenizer).classify([{"prompt": "hi, there", "response": "hello, you"}, {"prompt": "plain"}])
    assert rows[0]["id"] == "a1" and rows[0]["scores"] == direct[0]["scores"]
    assert rows[1]["response_refusal"] is None and rows[1]["scores"] == direct[1]["scores"]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "no such input file"),  # missing input
        (lambda d: (d / "in.csv").write_text("question,answer\nx,y\n"), "needs a 'prompt' column"),  # bad CSV header
        (lambda d: (d / "in.jsonl").write_text('{"prompt": "' + "word " * 400 + '"}\n'), "context holds 512"),  # first row too long
        (lambda d: (d / "in.txt").write_text("x"), "unknown input type"),  # unknown suffix
    ],
)
def test_refused_up_front_leaves_no_file(tokenizer, tmp_path, setup, message):
    setup(tmp_path)
    src = next(iter(sorted(tmp_path.glob("in.*"))), tmp_path / "in.jsonl")
    out = tmp_path / "out" / "res.jsonl"
    with pytest.raises(WildGuardLiteError, match=message):
        classify_file(fake_classifier(tokenizer, n_ctx=512), src, out)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_parquet_in_and_out_resume(tokenizer, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    items = eval_layout(4, 2)
    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": it["prompt"], "response": it.get("response"), "id": i}
                                         for i, it in enumerate(items)]), src)
    out = tmp_path / "out.parquet"
    classify_file(fake_classifier(tokenizer), src, out)
    rows = pq.read_table(out).to_pylist()
    expected = fake_classifier(tokenizer).classify(items)
    assert [r["index"] for r in rows] == list(range(len(items))) and [r["id"] for r in rows] == [str(i) for i in range(len(items))]
    assert [r["scores"] for r in rows] == [e["scores"] for e in expected]
    # More rows in the input: a rerun keeps the finished ones and classifies the new one.
    pq.write_table(pa.Table.from_pylist([{"prompt": it["prompt"], "response": it.get("response"), "id": i}
                                         for i, it in enumerate(items + [{"prompt": "new"}])]), src)
    report = classify_file(fake_classifier(tokenizer), src, out)
    assert (report.resumed, report.classified) == (len(items), 1)
    assert pq.read_table(out).to_pylist()[: len(items)] == rows


def test_resume_refuses_another_input(tokenizer, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    out = tmp_path / "out.jsonl"
    classify_file(fake_classifier(tokenizer), src, out)
    write_jsonl(src, [{"prompt": "a"}, {"prompt": "changed"}])
    with pytest.raises(WildGuardLiteError, match="row 1 was made from a different input"):
        classify_file(fake_classifier(tokenizer), src, out)


def test_resume_after_kill_loses_nothing(toy_gguf, tmp_path):
    """SIGKILL the CLI mid-run, rerun: the output equals an uninterrupted run's."""
    items = eval_layout(30, 6)
    src = write_jsonl(tmp_path / "in.jsonl", items)
    model = str(toy_gguf["q8_0"])
    cli = [sys.executable, "-c", "import sys; from wildguard_lite.cli import main; sys.exit(main())", "classify", "--model", model, "--threads", "1", "--input", str(src)]
    whole = tmp_path / "whole.jsonl"
    subprocess.run(cli + ["--output", str(whole), "--window", "32"], check=True, capture_output=True)
    out = tmp_path / "out.jsonl"
    partial = out.with_name("out.jsonl.partial")
    proc = subprocess.Popen(cli + ["--output", str(out), "--window", "32"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if partial.exists() and partial.stat().st_size > 0 and len(partial.read_bytes().splitlines()) >= 40:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists() and partial.exists()
    done = len(partial.read_bytes().splitlines())
    assert 0 < done < len(items)
    result = subprocess.run(cli + ["--output", str(out), "--window", "32"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resuming:" in result.stderr
    # Same labels; scores equal up to float noise (the KV cache held other prefixes).
    ours, theirs = read_jsonl(out), read_jsonl(whole)
    assert [r["index"] for r in ours] == list(range(len(items)))
    for a, b in zip(ours, theirs):
        assert {k: a[k] for k in ("prompt_harmfulness", "response_refusal", "response_harmfulness")} == \
               {k: b[k] for k in ("prompt_harmfulness", "response_refusal", "response_harmfulness")}
        for k, v in b["scores"].items():
            assert (v is None and a["scores"][k] is None) or abs(a["scores"][k] - v) < 1e-3


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
def test_million_rows_stream_with_flat_memory(tmp_path):
    """10^6 rows through the batch job (a fake classifier: the job's own reading, windows and
    writing): RSS after 10^4 rows and later barely differ. The benchmark reports the figure;
    here a generous bound that holding the rows (hundreds of MB) would break."""
    n = 1_000_000
    src = tmp_path / "big.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write('{"prompt": "is request %d harmful?", "response": "answer %d"}\n' % (i % 5000, i))
    samples = {}

    def progress(report):
        if report.classified == 10_000:
            samples["start"] = _rss_bytes()
        elif report.classified % 50_000 == 0:
            samples["peak"] = max(samples.get("peak", 0), _rss_bytes())

    report = classify_file(HashClassifier(), src, tmp_path / "out.jsonl", progress=progress)
    assert report.classified == n and report.rows == n
    growth = samples["peak"] - samples["start"]
    assert growth < 100 * 2**20, f"RSS grew {growth / 2**20:.0f} MiB from 10^4 to 10^6 rows"
