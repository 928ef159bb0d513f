"""The one planning path: batch files and Ray actors plan items as `classify` does (windows for
an input longer than the context, refused with over_context="error"), each row tokenized once."""

from __future__ import annotations

import json

import pytest
from server_fakes import HARMFUL, MarkerBackend, build_tokenizer

from wildguard_lite.config import RuntimeConfig
from wildguard_lite.errors import InvalidInputError
from wildguard_lite.runtime import Classifier

N_CTX = 512
PAD = "The river runs slowly past the old mill, and the baker opens at seven every morning. "


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def classifier(tok, **config):
    return Classifier(MarkerBackend(tok, n_ctx=N_CTX), tok, RuntimeConfig(**config))


def padding(tok, contexts: float) -> str:
    """Benign text `contexts` times the context long (in tokens, as a prompt)."""
    text = PAD
    while len(tok.encode_exchange(text)) < contexts * N_CTX:
        text += PAD
    return text


# -- batch files and Ray plan like classify: windows by default, refused with "error" ------------
def test_batch_file_row_longer_than_the_context_is_judged_in_windows(tok, tmp_path):
    """A row longer than the context is judged in windows (the default over_context="split"),
    as `classify` judges it, its result row carrying `windows`; with "error" it is refused
    naming the row. (Batch files used to refuse it whatever --over-context said.)"""
    from wildguard_lite.batch import classify_file

    long_item = {"prompt": padding(tok, 1.5) + HARMFUL + " " + padding(tok, 1.5)}
    items = [{"prompt": "short"}, long_item, {"prompt": "hi", "response": padding(tok, 2) + HARMFUL}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    report = classify_file(classifier(tok), src, out)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    expected = classifier(tok).classify(items)
    assert report.classified == 3 and [r["index"] for r in rows] == [0, 1, 2]
    assert [{k: v for k, v in r.items() if k not in ("index", "item_sha256")} for r in rows] == expected
    assert "windows" not in rows[0] and rows[1]["windows"] >= 3 and rows[2]["windows"] >= 2
    assert rows[1]["prompt_harmfulness"] == "harmful" and rows[2]["response_harmfulness"] == "harmful"
    # each row is tokenized once: the input tokens counted are the planned windows' ids
    clf = classifier(tok)
    assert report.tokens_input == sum(p.tokens for p in clf.plan(items))

    refusing = classifier(tok, over_context="error")
    with pytest.raises(InvalidInputError, match=rf"line 2: input is \d+ tokens but the context holds {N_CTX}"):
        classify_file(refusing, src, tmp_path / "refused.jsonl")
    kept = (tmp_path / "refused.jsonl.partial").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["index"] for line in kept] == [0]  # the row before it, kept
    report = classify_file(refusing, src, tmp_path / "recorded.jsonl", on_bad_row="record")
    assert report.errors == 2 and report.classified == 1


def test_ray_batches_plan_like_classify(tok):
    """The Ray actor's batch call (run here without Ray: its planning and result columns) judges
    a long row in windows, and refuses it with over_context="error"."""
    pa = pytest.importorskip("pyarrow")
    from wildguard_lite.ray_data import WildGuardPredictor

    prompts = ["short", padding(tok, 1.5) + HARMFUL]
    batch = pa.table({"prompt": prompts, "response": [None, None]})
    for over_context, refused in (("split", False), ("error", True)):
        predictor = object.__new__(WildGuardPredictor)  # its __init__ loads a model file
        predictor.clf = classifier(tok, over_context=over_context)
        rows = predictor(batch).to_pylist()
        assert rows[0]["error"] is None and rows[0]["windows"] is None
        if refused:
            assert "context holds" in rows[1]["error"] and rows[1]["prompt_harmfulness"] is None
        else:
            assert rows[1]["error"] is None and rows[1]["windows"] >= 2
            assert rows[1]["prompt_harmfulness"] == "harmful"
