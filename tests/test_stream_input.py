"""Bad input to a stream: refused with the library's error, and the stream stays usable."""

from __future__ import annotations

import pytest

from server_fakes import HARMFUL, MarkerBackend, build_tokenizer
from wildguard_lite.errors import InvalidInputError
from wildguard_lite.runtime import Classifier
from wildguard_lite.streaming import StreamRule


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    tok = build_tokenizer(tmp_path_factory.mktemp("tok"))
    return Classifier(MarkerBackend(tok), tok)


CASES = [
    # (what is fed, the error's words)
    ("x \ud800", "lone surrogate"),  # a JSON escape of half a pair: pybind11 RuntimeError before
    ("ok \udcff", "undecodable byte"),  # surrogateescape'd bytes
    (b"bytes", "takes response text"),  # not a str
]


@pytest.mark.parametrize("text,words", CASES)
def test_a_bad_chunk_is_refused_and_not_kept(clf, text, words):
    stream = clf.stream("How do I bake bread?", interval=1)
    stream.feed("Mix flour ")
    with pytest.raises(InvalidInputError, match=words):
        stream.feed(text)
    assert stream.response == "Mix flour "  # the bad chunk never joined the response
    verdict = stream.feed(f"and water {HARMFUL} ")  # later feeds work and still see the text
    assert verdict is not None and verdict["flagged"]


@pytest.mark.parametrize("rule", ["response_harmfulness", {"label": "response_harmfulness"}, 0.5])
def test_a_rule_that_is_not_a_stream_rule_is_refused_at_once(clf, rule):
    with pytest.raises(InvalidInputError, match="StreamRule"):
        clf.stream("How do I bake bread?", rule=rule)
    assert clf.stream("How do I bake bread?", rule=StreamRule(threshold=0.4)).rule.threshold == 0.4
