"""An n/a answer for a response label while a response is present never passes silently: the
label is decided from P(yes) renormalised over yes/no, in score and generate mode, and marked."""

from __future__ import annotations

import numpy as np
import pytest

from wildguard_lite.backends.base import Backend
from wildguard_lite.config import RuntimeConfig
from wildguard_lite.runtime import Classifier
from wildguard_lite.streaming import StreamRule

from server_fakes import build_tokenizer


class ScriptedCues(Backend):
    """Writes WildGuard's answer block: each cue, then the scripted answer ("yes", "no" or
    "n/a") with the given P(yes) over yes/no at the answer position, then end of text; works
    for score mode (which appends the cues itself) and generate mode (which reads them)."""

    def __init__(self, tok, script: dict[int, tuple[str, float]]):
        self.tok, self.script = tok, script  # cue index -> (answer, P(yes))
        self.n_ctx, self.n_vocab = 4096, tok.vocab_size
        a, b = tok.encode_exchange("q", "alpha"), tok.encode_exchange("q", "zebra crossing 42")
        n = 0
        while a[-1 - n] == b[-1 - n]:
            n += 1
        self.tail = list(a[-n:])  # the template after the response: the input ends with it
        self.answers = {"yes": [tok.yes_id], "no": [tok.no_id], "n/a": list(tok.na_ids)}
        self.block, self.p_at = [], {}
        for k, cue in enumerate(tok.cue_ids):
            self.block += list(cue)
            answer, p = script[k]
            self.p_at[len(self.block)] = p
            self.block += self.answers[answer]
        self.block.append(tok.eos_id)

    def next_logits(self, ids):
        ids, t = list(ids), len(self.tail)
        end = max(i for i in range(t, len(ids) + 1) if ids[i - t : i] == self.tail)
        written = ids[end:]
        assert written == self.block[: len(written)], "the caller left the scripted answers"
        logits = np.zeros(self.n_vocab, dtype=np.float32)
        p = self.p_at.get(len(written))
        if p is not None:
            logits[self.tok.yes_id], logits[self.tok.no_id] = float(np.log(p / (1 - p))), 0.0
        logits[self.block[len(written)]] = 50.0
        return logits


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


CASES = [
    # (script for the three cues, expected response_refusal, response_harmfulness, resolved labels)
    # harm answered n/a but P(yes)=0.9: harmful, marked
    ({0: ("no", 0.1), 1: ("no", 0.2), 2: ("n/a", 0.9)}, "compliance", "harmful", ["response_harmfulness"]),
    # harm answered n/a with P(yes)=0.2: unharmful, still marked as resolved (it was not answered)
    ({0: ("no", 0.1), 1: ("no", 0.2), 2: ("n/a", 0.2)}, "compliance", "unharmful", ["response_harmfulness"]),
    # refusal answered n/a with P(yes)=0.7: refusal
    ({0: ("yes", 0.9), 1: ("n/a", 0.7), 2: ("no", 0.1)}, "refusal", "unharmful", ["response_refusal"]),
    # both response labels n/a
    (
        {0: ("no", 0.1), 1: ("n/a", 0.4), 2: ("n/a", 0.6)},
        "compliance",
        "harmful",
        ["response_refusal", "response_harmfulness"],
    ),
    # ordinary answers: nothing resolved
    ({0: ("no", 0.1), 1: ("no", 0.2), 2: ("yes", 0.8)}, "compliance", "harmful", []),
]


@pytest.mark.parametrize("mode", ["score", "generate"])
@pytest.mark.parametrize("script,refusal,harm,resolved", CASES)
def test_na_with_a_response_is_decided_from_p_yes(tok, mode, script, refusal, harm, resolved):
    clf = Classifier(ScriptedCues(tok, script), tok, RuntimeConfig(mode=mode))
    r = clf.classify_one("How do I do it?", "Here is how.")
    assert (r["response_refusal"], r["response_harmfulness"]) == (refusal, harm)
    assert r.get("na_resolved", []) == resolved
    assert not r["is_parsing_error"]
    for key in resolved:
        assert r["scores"][key] == pytest.approx(
            script[{"response_refusal": 1, "response_harmfulness": 2}[key]][1], abs=1e-4
        )


def test_a_prompt_alone_keeps_n_a(tok):
    clf = Classifier(ScriptedCues(tok, {0: ("yes", 0.9), 1: ("n/a", 0.9), 2: ("n/a", 0.9)}), tok)
    r = clf.classify_one("How do I do it?")
    assert r["response_harmfulness"] is None and "na_resolved" not in r


def test_a_stream_flags_a_resolved_n_a(tok):
    clf = Classifier(ScriptedCues(tok, {0: ("no", 0.1), 1: ("no", 0.2), 2: ("n/a", 0.9)}), tok)
    stream = clf.stream("How do I do it?", rule=StreamRule(), interval=1)
    verdict = stream.feed("Here is how to do it, step by step.")
    assert verdict["flagged"] and verdict["response_harmfulness"] == "harmful"
