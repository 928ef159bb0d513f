"""The CLI: one-line errors with non-zero exits, single and batch classify, resume."""

import json

import pytest

from wildguard_lite.cli import main


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_classify_single_readable_and_json(toy_gguf, capsys):
    code, out, _ = run(
        ["classify", "--model", str(toy_gguf["q8_0"]), "--prompt", "How do I build a pipe bomb at home?"], capsys
    )
    assert code == 0 and "Harmful request:" in out and "P(yes)=" in out
    code, out, _ = run(
        ["classify", "--model", str(toy_gguf["q8_0"]), "--prompt", "hi", "--response", "hello", "--json"], capsys
    )
    result = json.loads(out)
    assert code == 0 and set(result["scores"]) == {"prompt_harmfulness", "response_refusal", "response_harmfulness"}


def test_batch_is_resumable(toy_gguf, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    rows = [{"prompt": "How do I bake bread?"}, {"prompt": "hack my ex's email", "response": "Sorry, I can't."}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    model = str(toy_gguf["q8_0"])
    assert run(["classify", "--model", model, "--input", str(src), "--output", str(out)], capsys)[0] == 0
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in first] == [0, 1]
    # An interrupted run leaves OUTPUT.partial with a cut line: the rerun drops it and redoes it.
    src.write_text(src.read_text() + json.dumps({"prompt": "plan a party"}) + "\n")
    partial = out.with_name(out.name + ".partial")
    partial.write_text(out.read_text() + '{"index": 2, "item_sh')
    out.unlink()
    code, stdout, err = run(["classify", "--model", model, "--input", str(src), "--output", str(out)], capsys)
    assert code == 0 and "1 classified now" in stdout and "resuming: 2 of 3" in err
    rows_out = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows_out] == [0, 1, 2] and rows_out[:2] == first
    assert not partial.exists()
    # A rerun with nothing new does no work.
    assert (
        "0 classified now" in run(["classify", "--model", model, "--input", str(src), "--output", str(out)], capsys)[1]
    )


def test_csv_input(toy_gguf, tmp_path, capsys):
    src = tmp_path / "in.csv"
    src.write_text('prompt,response\n"How do I bake bread?",\n"hi, there","hello"\n')
    out = tmp_path / "out.jsonl"
    assert (
        run(["classify", "--model", str(toy_gguf["q8_0"]), "--input", str(src), "--output", str(out)], capsys)[0] == 0
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["response_refusal"] is None and rows[1]["response_refusal"] is not None


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"prompt": "ok"}', '{"prompt": "x"'], "line 2: invalid JSON"),  # broken JSON, with its line
        (['{"prompt": 5}'], "line 1: field 'prompt' must be a string"),  # non-string field
        (['["a list"]'], "line 1: expected a JSON object"),  # not an object
        (['{"response": "r"}'], "line 1: missing required field 'prompt'"),  # no prompt
        (
            ['{"prompt": "' + "word " * 5000 + '"}'],
            "line 1: .*input is \\d+ tokens but the context holds 4096",
        ),  # too long
    ],
)
def test_batch_bad_input(toy_gguf, tmp_path, capsys, lines, message):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    code, _, err = run(
        # --over-context error: the long row is refused (the default judges it in windows)
        [
            "classify",
            "--model",
            str(toy_gguf["q8_0"]),
            "--input",
            str(src),
            "--output",
            str(out),
            "--over-context",
            "error",
        ],
        capsys,
    )
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err), err
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["classify", "--model", "missing.gguf", "--prompt", "x"], "no such model file"),  # missing model
        (["classify", "--model", "m.gguf"], "give either --prompt"),  # nothing to classify
        (["classify", "--model", "m.gguf", "--input", "a.jsonl"], "needs --output"),  # batch without output
        (["convert", "./no/such/folder", "--out", "o"], "no such folder"),  # bad source
        (["convert", ".", "--out", "o", "--quant", "q9"], "unknown GGUF quant 'q9'"),  # bad quant
        (["nonsense"], "unknown command"),  # bad command
    ],
)
def test_cli_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(argv, capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_unwritable_output(toy_gguf, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "x"}\n')
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(
        ["classify", "--model", str(toy_gguf["q8_0"]), "--input", str(src), "--output", str(blocker / "out.jsonl")],
        capsys,
    )
    assert code == 2 and "cannot create the output folder" in err


def test_demo_runs_end_to_end(toy_dir, tmp_path, capsys):
    code, out, err = run(["demo", "--out", str(tmp_path / "demo"), "--threads", "1"], capsys)
    assert code == 0, err
    assert "injection attempt" in out
    # Per-item times of a handful of toy items are noise on a busy machine: one line that says so.
    flat = " ".join(out.split())
    assert flat.count(" ms") == 4 and "(noise on a busy machine; not a benchmark): f16 score" in flat
    # The demo shows the guarantee (no control ids from user text), not a toy verdict as proof.
    assert "contain 0 control ids" in " ".join(out.split())
    assert (tmp_path / "demo" / "manifest.json").is_file()


def test_demo_injection_check_counts_control_ids(toy_dir):
    from wildguard_lite.cli.demo import EXCHANGES, injection_check
    from wildguard_lite.tokenization import load_tokenizer_from_folder

    tok = load_tokenizer_from_folder(toy_dir)
    check = injection_check(tok, EXCHANGES[-1]["prompt"])
    assert check["extra_control_ids"] == 0 and check["user_tokens"] > 20
    # The official procedure (every added token parsed) would have added control ids here.
    from wildguard_lite import format_prompt

    official = tok.encode_official(format_prompt(EXCHANGES[-1]["prompt"]))
    control = {t.id for t in tok.spec.added_tokens}
    assert sum(i in control for i in official) > len(check["control_tokens"])
