"""The bad-input matrix for the CLI and the Python API (the server's rows live in test_server.py).

One commented row per case. A process must never die on input: every case that once crashed
(SIGSEGV, SIGABRT, std::bad_alloc) runs in a child process, so a regression is a failed row,
not a dead pytest. Each row asserts what the project controls: the error type, a message that
names the problem, exit status 2 on the CLI, no traceback, nothing left half-written.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import wildguard_lite
from wildguard_lite.backends.base import Backend
from wildguard_lite.errors import ClassifierClosedError, InputTooLongError, InvalidInputError, ModelFileError
from wildguard_lite.gguf_meta import KEY_TOKENIZER_CONFIG
from wildguard_lite.config import RuntimeConfig
from wildguard_lite.runtime import Classifier
from wildguard_lite.tokenization import load_tokenizer_from_folder

CHILD_TIMEOUT = 300  # seconds; generous for a busy 2-core machine

# The CLI in a child process (argv may hold bytes that are not UTF-8).
CLI = "import sys; from wildguard_lite.cli import main; sys.exit(main())"

# The Python API in a child process: load with keyword options, classify one item, report the
# outcome as JSON. Any exception that is not the project's own is a traceback and exit 1.
API = """
import json, sys
import wildguard_lite
from wildguard_lite.errors import WildGuardLiteError
path, options, item = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
try:
    with wildguard_lite.load(path, **options) as clf:
        clf.classify([item])
    print(json.dumps({"outcome": "ok"}))
except WildGuardLiteError as exc:
    print(json.dumps({"outcome": type(exc).__name__, "message": str(exc)}))
"""


def child(args: list, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, *args], capture_output=True, timeout=CHILD_TIMEOUT, env=env, **kwargs)


def run_api(model: Path, options: dict | None = None, item: dict | None = None) -> dict:
    proc = child(["-c", API, str(model), json.dumps(options or {}), json.dumps(item or {"prompt": "hello"})])
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, f"child died or raised (status {proc.returncode}): {err[-2000:]}"
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def assert_clean_cli_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, f"status {proc.returncode}: {err[-2000:]}"
    assert "Traceback" not in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert re.search(pattern, err), err


# -- model files: every hyperparameter llama.cpp asserts on (rewritten toy GGUF metadata) --------


def rewrite_gguf(src: Path, dst: Path, overrides: dict) -> Path:
    """Copy a GGUF with metadata replaced ((value, GGUFValueType)) or removed (None)."""
    import gguf

    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in overrides:
            continue
        kind = field.types[0]
        writer.add_key_value(
            key, field.contents(), kind, sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        )
    for key, value in overrides.items():
        if value is not None:
            writer.add_key_value(key, *value)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_shape=[int(x) for x in reversed(t.shape)], raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def _u32(v):
    import gguf

    return (v, gguf.GGUFValueType.UINT32)


def _f32(v):
    import gguf

    return (v, gguf.GGUFValueType.FLOAT32)


def _str(v):
    import gguf

    return (v, gguf.GGUFValueType.STRING)


def _tok_config(mutate):
    """An override of the embedded tokenizer config: mutate(config dict) -> None."""

    def make(src: Path):
        import gguf

        config = json.loads(gguf.GGUFReader(src).fields[KEY_TOKENIZER_CONFIG].contents())
        mutate(config)
        return _str(json.dumps(config))

    return make


def _drop_added(*contents):
    return lambda c: c.__setitem__("added_tokens", [t for t in c["added_tokens"] if t["content"] not in contents])


def _set_added(content, **fields):
    return lambda c: [t.update(fields) for t in c["added_tokens"] if t["content"] == content]


GGUF_ROWS = [
    # block_count 0: llama.cpp aborted (SIGABRT) with no message
    ({"llama.block_count": lambda s: _u32(0)}, r"'llama.block_count' is 0; it must be an integer from 1 to 512"),
    # block_count above llama.cpp's LLAMA_MAX_LAYERS: SIGABRT
    ({"llama.block_count": lambda s: _u32(513)}, r"'llama.block_count' is 513"),
    # block_count absurd: SIGABRT
    ({"llama.block_count": lambda s: _u32(100000)}, r"'llama.block_count' is 100000"),
    # block_count missing
    ({"llama.block_count": None}, r"'llama.block_count' is missing"),
    # block_count of the wrong type
    ({"llama.block_count": lambda s: _str("two")}, r"'llama.block_count' is 'two'"),
    # an expert count on the dense model: SIGABRT
    ({"llama.expert_count": lambda s: _u32(4)}, r"'llama.expert_count' is 4; it must be exactly 0"),
    # no attention heads: llama.cpp divides by it
    ({"llama.attention.head_count": lambda s: _u32(0)}, r"'llama.attention.head_count' is 0"),
    # no KV heads
    ({"llama.attention.head_count_kv": lambda s: _u32(0)}, r"'llama.attention.head_count_kv' is 0"),
    # KV heads that do not divide the heads (toy: 4 heads)
    (
        {"llama.attention.head_count_kv": lambda s: _u32(3)},
        r"'llama.attention.head_count_kv' is 3; it must be a divisor",
    ),
    # heads that do not divide the width (toy: 256)
    (
        {"llama.attention.head_count": lambda s: _u32(3), "llama.attention.head_count_kv": lambda s: _u32(1)},
        r"'llama.attention.head_count' is 3; it must be a divisor of embedding_length",
    ),
    # zero width
    ({"llama.embedding_length": lambda s: _u32(0)}, r"'llama.embedding_length' is 0"),
    # zero feed-forward width
    ({"llama.feed_forward_length": lambda s: _u32(0)}, r"'llama.feed_forward_length' is 0"),
    # zero head size
    ({"llama.attention.key_length": lambda s: _u32(0)}, r"'llama.attention.key_length' is 0"),
    # rope dimensions other than the head size
    ({"llama.rope.dimension_count": lambda s: _u32(8)}, r"'llama.rope.dimension_count' is 8; it must be the head size"),
    # zero rope base: loaded and gave garbage verdicts
    ({"llama.rope.freq_base": lambda s: _f32(0.0)}, r"'llama.rope.freq_base' is 0.0"),
    # zero norm epsilon: loaded and gave garbage verdicts
    (
        {"llama.attention.layer_norm_rms_epsilon": lambda s: _f32(0.0)},
        r"'llama.attention.layer_norm_rms_epsilon' is 0.0",
    ),
    # zero context length
    ({"llama.context_length": lambda s: _u32(0)}, r"'llama.context_length' is 0"),
    # a vocabulary size that disagrees with the token list
    ({"llama.vocab_size": lambda s: _u32(7)}, r"'llama.vocab_size' is 7"),
    # more layers than the file has tensors: llama.cpp refuses, and its own reason is shown
    ({"llama.block_count": lambda s: _u32(3)}, r"llama.cpp said: .*blk\.2\..*not found"),
    # embedded tokenizer config without [INST]/[/INST]: the template encoded as plain text
    (
        {KEY_TOKENIZER_CONFIG: _tok_config(_drop_added("[INST]", "[/INST]"))},
        r"no added token for WildGuard's control token '\[INST\]'",
    ),
    # [/INST] mapped to an id that is not that control token
    (
        {KEY_TOKENIZER_CONFIG: _tok_config(_set_added("[/INST]", id=100))},
        r"'\[/INST\]' maps to id 100 .* not that control token",
    ),
    # an added token id beyond the vocabulary
    ({KEY_TOKENIZER_CONFIG: _tok_config(_set_added("[INST]", id=10**6))}, r"id 1000000, outside the vocabulary"),
    # a wrong type in the embedded config (a string for a boolean)
    ({KEY_TOKENIZER_CONFIG: _tok_config(lambda c: c.__setitem__("legacy", "yes"))}, r"'legacy' must be bool, got str"),
    # a wrong type in an added token
    ({KEY_TOKENIZER_CONFIG: _tok_config(_set_added("[INST]", id="3"))}, r"malformed added token"),
    # the embedded config is not JSON
    ({KEY_TOKENIZER_CONFIG: lambda s: _str("{not json")}, r"embedded tokenizer config: not valid JSON"),
]


@pytest.mark.parametrize("overrides, message", GGUF_ROWS, ids=[f"gguf-{i}" for i in range(len(GGUF_ROWS))])
def test_bad_gguf_metadata_is_a_clear_error(toy_gguf, tmp_path, overrides, message):
    src = toy_gguf["f16"]
    bad = rewrite_gguf(src, tmp_path / "bad.gguf", {k: (v(src) if callable(v) else v) for k, v in overrides.items()})
    out = run_api(bad, {"threads": 1})
    assert out["outcome"] == "ModelFileError" and re.search(message, out["message"]), out


def test_bad_gguf_on_the_cli(toy_gguf, tmp_path):
    # The same check from the CLI: one line, status 2 (was SIGABRT).
    bad = rewrite_gguf(toy_gguf["f16"], tmp_path / "bad.gguf", {"llama.block_count": _u32(0)})
    assert_clean_cli_error(child(["-c", CLI, "classify", "--model", str(bad), "--prompt", "hi"]), "block_count")


# -- ONNX folders: the tokenizer and context checks run before onnxruntime opens anything -------


def _onnx_folder(toy_dir: Path, folder: Path, config: dict | None = None, mutate=None) -> Path:
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not reached: the folder is refused first")
    (folder / "tokenizer.model").write_bytes((toy_dir / "tokenizer.model").read_bytes())
    tok = json.loads((toy_dir / "tokenizer_config.json").read_text())
    if mutate:
        mutate(tok)
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    (folder / "config.json").write_text(json.dumps(config or {"max_position_embeddings": 4096}))
    return folder


ONNX_ROWS = [
    # tokenizer_config without added tokens: [INST] would be plain text
    (None, lambda c: c.pop("added_tokens_decoder"), {}, r"no added token for WildGuard's control token"),
    # an added token of the wrong shape
    (None, lambda c: c["added_tokens_decoder"]["3"].__setitem__("content", 5), {}, r"malformed added token"),
    # added_tokens_decoder of the wrong type
    (
        None,
        lambda c: c.__setitem__("added_tokens_decoder", ["[INST]"]),
        {},
        r"'added_tokens_decoder' must be an object",
    ),
    # a flag of the wrong type
    (None, lambda c: c.__setitem__("legacy", "false"), {}, r"'legacy' must be true, false or null"),
    # n_ctx above config.json's max_position_embeddings
    (
        {"max_position_embeddings": 2048},
        None,
        {"n_ctx": 4096},
        r"n_ctx 4096 exceeds the model's trained context of 2048",
    ),
    # a config.json max_position_embeddings of the wrong type
    ({"max_position_embeddings": "4096"}, None, {}, r"max_position_embeddings must be a positive integer"),
]


@pytest.mark.parametrize(
    "config, mutate, options, message", ONNX_ROWS, ids=[f"onnx-{i}" for i in range(len(ONNX_ROWS))]
)
def test_bad_onnx_folder_is_a_clear_error(toy_dir, tmp_path, config, mutate, options, message):
    folder = _onnx_folder(toy_dir, tmp_path / "variant", config, mutate)
    with pytest.raises((InvalidInputError, ModelFileError), match=message):
        wildguard_lite.load(folder, **options)


# -- engine options: refused at config time, before llama.cpp sees them ------------------------

OPTION_ROWS = [
    # thread count far beyond llama.cpp's GGML_MAX_N_THREADS: was std::bad_alloc (SIGABRT)
    ({"threads": 50000}, r"threads must be between 1 and 512, got 50000"),
    # zero threads
    ({"threads": 0}, r"threads must be between 1 and 512"),
    # threads as a string
    ({"threads": "4"}, r"threads must be an integer, got str"),
    # n_ctx that wraps in llama.cpp's uint32 (2**32+300 became 512 silently)
    ({"n_ctx": 2**32 + 300}, r"n_ctx must be between 64 and 2147483647"),
    # n_ctx above the GGUF's context_length (the toy's is 4096): was accepted silently
    (
        {"n_ctx": 8192},
        r"n_ctx 8192 exceeds the model's trained context of 4096 .*llama.context_length.*use n_ctx <= 4096",
    ),
    # n_ctx below what the template needs
    ({"n_ctx": 8}, r"n_ctx must be between 64"),
    # n_ctx as a float
    ({"n_ctx": 4096.5}, r"n_ctx must be an integer, got float"),
    # a boolean is not a count
    ({"threads": True}, r"threads must be an integer, got bool"),
]


@pytest.mark.parametrize("options, message", OPTION_ROWS, ids=[f"option-{i}" for i in range(len(OPTION_ROWS))])
def test_bad_engine_options(toy_gguf, options, message):
    out = run_api(toy_gguf["f16"], options)
    assert out["outcome"] == "InvalidInputError" and re.search(message, out["message"]), out


CLI_OPTION_ROWS = [
    # --threads 50000: was std::bad_alloc
    (["--threads", "50000"], r"threads must be between 1 and 512"),
    # --n-ctx that wraps to 512 in llama.cpp
    (["--n-ctx", str(2**32 + 300)], r"n_ctx must be between 64 and 2147483647"),
    # --n-ctx above the model's trained context
    (["--n-ctx", "8192"], r"exceeds the model's trained context of 4096"),
]


@pytest.mark.parametrize(
    "extra, message", CLI_OPTION_ROWS, ids=[f"cli-option-{i}" for i in range(len(CLI_OPTION_ROWS))]
)
def test_bad_engine_options_on_the_cli(toy_gguf, extra, message):
    proc = child(["-c", CLI, "classify", "--model", str(toy_gguf["f16"]), "--prompt", "hi", *extra])
    assert_clean_cli_error(proc, message)


# -- text that is not valid Unicode ------------------------------------------------------------

API_TEXT_ROWS = [
    # a lone surrogate in the prompt (JSON "\ud800"): was a sentencepiece RuntimeError
    ({"prompt": "a\ud800b"}, r"item 0: field 'prompt' is not valid text: character 1 is a lone surrogate \(U\+D800\)"),
    # a lone low surrogate in the response
    ({"prompt": "ok", "response": "\udfff"}, r"item 0: field 'response' is not valid text"),
    # an undecodable byte smuggled in by surrogateescape
    ({"prompt": "caf\udce9"}, r"U\+DCE9, an undecodable byte"),
]


@pytest.mark.parametrize("item, message", API_TEXT_ROWS, ids=[f"api-text-{i}" for i in range(len(API_TEXT_ROWS))])
def test_invalid_unicode_in_the_api(toy_gguf, item, message):
    with wildguard_lite.load(toy_gguf["f16"], threads=1) as clf:
        with pytest.raises(InvalidInputError, match=message):
            clf.classify([item])
        assert "is_parsing_error" in clf.classify_one("still works")  # the classifier survives


CLI_TEXT_ROWS = [
    # invalid UTF-8 in --prompt (argv bytes): was a traceback
    ([b"--prompt", b"caf\xe9"], r"--prompt is not valid text: .*undecodable byte"),
    # invalid UTF-8 in --response
    ([b"--prompt", b"ok", b"--response", b"\xff\xfe"], r"--response is not valid text"),
]


@pytest.mark.parametrize("extra, message", CLI_TEXT_ROWS, ids=[f"cli-text-{i}" for i in range(len(CLI_TEXT_ROWS))])
def test_invalid_utf8_argv(toy_gguf, extra, message):
    proc = child([b"-c", CLI.encode(), b"classify", b"--model", str(toy_gguf["f16"]).encode(), *extra])
    assert_clean_cli_error(proc, message)


def test_lone_surrogate_in_a_jsonl_batch(toy_gguf, tmp_path):
    # A JSON "\ud800" escape in a batch row: named with its line, nothing written.
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "ok"}\n{"prompt": "bad \\ud800"}\n')
    out = tmp_path / "out.jsonl"
    proc = child(["-c", CLI, "classify", "--model", str(toy_gguf["f16"]), "--input", str(src), "--output", str(out)])
    assert_clean_cli_error(proc, r"line 2: .*field 'prompt' is not valid text")
    # The batch streams: the row before the bad one is kept for a resume, nothing after it.
    assert not out.exists() and len(out.with_name("out.jsonl.partial").read_text().splitlines()) == 1


# -- the classifier's lifecycle and concurrency ------------------------------------------------


def test_classify_after_close_is_a_clear_error(toy_gguf):
    clf = wildguard_lite.load(toy_gguf["f16"], threads=1)
    clf.close()
    clf.close()  # twice is fine
    for call in (
        lambda: clf.classify([{"prompt": "x"}]),
        lambda: clf.classify_one("x"),
        lambda: clf.encode({"prompt": "x"}),
    ):
        with pytest.raises(ClassifierClosedError, match="this Classifier was closed"):
            call()


CONCURRENT = """
import json, sys
from concurrent.futures import ThreadPoolExecutor
import wildguard_lite
clf = wildguard_lite.load(sys.argv[1], threads=1, mode=sys.argv[2])
items = [{"prompt": f"question {i} " * (1 + i % 7), **({"response": "answer " * (i % 5)} if i % 2 else {})}
         for i in range(48)]
alone = [clf.classify([item])[0] for item in items]
with ThreadPoolExecutor(8) as pool:
    together = list(pool.map(lambda item: clf.classify([item])[0], items))
# The KV cache keeps the previous call's prefix, and which tokens are re-evaluated (so llama.cpp's
# batch shapes, so the last float bits) depends on the order: labels must match exactly, P(yes)
# to float noise.
labels = lambda rs: [{k: v for k, v in r.items() if k != "scores"} for r in rs]
diff = max((abs((a["scores"][k] or 0) - (b["scores"][k] or 0)) for a, b in zip(alone, together) for k in a["scores"]),
           default=0.0)
print(json.dumps({"same": labels(together) == labels(alone) and diff < 1e-3, "max_diff": diff}))
"""


@pytest.mark.parametrize("mode", ["score", "generate"])
def test_one_classifier_from_many_threads(toy_gguf, mode):
    # 8 threads share one Classifier (a web app's pool): was SIGSEGV or a hang. Results must
    # equal the same items classified one after another.
    proc = child(["-c", CONCURRENT, str(toy_gguf["f16"]), mode])
    assert proc.returncode == 0, f"status {proc.returncode}: {proc.stderr.decode()[-2000:]}"
    assert json.loads(proc.stdout.decode())["same"], proc.stdout.decode()


# -- the score-mode length budget at the exact boundary ----------------------------------------


class QueuedBackend(Backend):
    """A fake engine that answers with queued argmax tokens and refuses sequences over n_ctx,
    as llama.cpp does."""

    def __init__(self, n_vocab: int, n_ctx: int, answers: list[int]):
        self.n_vocab, self.n_ctx, self.answers, self.calls = n_vocab, n_ctx, list(answers), []

    def next_logits(self, ids):
        if len(ids) > self.n_ctx:
            raise ValueError(f"{len(ids)} tokens exceed the context of {self.n_ctx}")
        self.calls.append(list(ids))
        logits = np.zeros(self.n_vocab, dtype=np.float32)
        logits[self.answers.pop(0)] = 5.0
        return logits


@pytest.mark.parametrize("slack", [0, -1])
def test_score_budget_at_the_exact_boundary(toy_dir, slack):
    # The model answers " n/a" (several tokens) at the second cue: the longest score-mode path.
    # An item that exactly fills n_ctx must run to the end; one token more is refused up front.
    tok = load_tokenizer_from_folder(toy_dir)
    item = {"prompt": "p", "response": "r"}
    ids = tok.encode_exchange(item["prompt"], item["response"])
    longest = len(ids) + sum(map(len, tok.cue_ids)) + 1 + len(tok.na_ids)
    backend = QueuedBackend(tok.vocab_size, longest + slack, [tok.yes_id, tok.na_ids[0], tok.no_id])
    clf = Classifier(backend, tok, RuntimeConfig(n_ctx=backend.n_ctx))
    if slack < 0:
        with pytest.raises(InputTooLongError, match=rf"input is {longest} tokens but the context holds {longest - 1}"):
            clf.classify([item])
        assert backend.calls == []  # refused before any evaluation, not mid-batch
    else:
        result = clf.classify([item])[0]
        assert max(map(len, backend.calls)) == longest
        # n/a with a response present is decided from P(yes) (0.5 here: yes and no tie).
        assert (result["prompt_harmfulness"], result["response_refusal"], result["response_harmfulness"]) == (
            "harmful",
            "refusal",
            "unharmful",
        )
        assert result["na_resolved"] == ["response_refusal"]


# -- where the CLI writes ----------------------------------------------------------------------

OUTPUT_ROWS = [
    # into /proc: was a traceback
    (lambda tmp: Path("/proc/wildguard-out.jsonl"), r"cannot create files in /proc"),
    # into /sys: was a traceback
    (lambda tmp: Path("/sys/wildguard-out.jsonl"), r"cannot create files in /sys"),
    # onto a folder: was IsADirectoryError
    (lambda tmp: tmp, r"is a folder; give a file name"),
]


@pytest.mark.parametrize("output, message", OUTPUT_ROWS, ids=["proc", "sys", "folder"])
def test_bad_output_paths(toy_gguf, tmp_path, output, message):
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "x"}\n')
    proc = child(
        ["-c", CLI, "classify", "--model", str(toy_gguf["f16"]), "--input", str(src), "--output", str(output(tmp_path))]
    )
    assert_clean_cli_error(proc, message)


def test_no_empty_partial_after_an_up_front_refusal(toy_gguf, tmp_path):
    # The first row is too long for the context: refused before any result, nothing left behind.
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "word " * 5000}) + "\n" + json.dumps({"prompt": "ok"}) + "\n")
    out = tmp_path / "out.jsonl"
    # (With the default --over-context split such a row is judged in windows: ask for the refusal.)
    argv = ["-c", CLI, "classify", "--model", str(toy_gguf["f16"]), "--input", str(src), "--output", str(out)]
    proc = child([*argv, "--over-context", "error"])
    assert_clean_cli_error(proc, r"line 1: input is \d+ tokens")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_closed_stdout_pipe_is_a_quiet_exit(toy_gguf):
    # `wildguard-lite classify ... | head -0`: the reader is gone before we print.
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CLI, "classify", "--model", str(toy_gguf["f16"]), "--prompt", "hi", "--json"],
            stdout=write,
            stderr=subprocess.PIPE,
            timeout=CHILD_TIMEOUT,
        )
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == b"", proc.stderr.decode()[-2000:]
