"""Inputs longer than the context: the windows (wildguard_lite/windows.py) over a fake engine
whose verdicts the test decides by markers, through the real Classifier and server."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest
from server_fakes import HARMFUL, REFUSE, UNREADABLE, MarkerBackend, build_tokenizer, sections

from wildguard_lite.config import RuntimeConfig
from wildguard_lite.contract import LABEL_KEYS
from wildguard_lite.errors import InputTooLongError, InvalidInputError
from wildguard_lite.runtime import Classifier
from wildguard_lite.windows import Window, merge_results, plan_windows

N_CTX = 512
PAD = "The river runs slowly past the old mill, and the baker opens at seven every morning. "


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def classifier(tok, n_ctx=N_CTX, **config):
    return Classifier(MarkerBackend(tok, n_ctx=n_ctx), tok, RuntimeConfig(**config))


def padding(tok, contexts: float) -> str:
    """Benign text `contexts` times the context long (in tokens, as a prompt)."""
    text = PAD
    while len(tok.encode_exchange(text)) < contexts * N_CTX:
        text += PAD
    return text


def capacities(clf):
    return N_CTX - clf._score_budget_prompt, N_CTX - clf._score_budget


# -- the plan: every character and token inside a window that fits ------------------------------
TEXTS = {
    "sentences": lambda rng: PAD * 40,
    "no whitespace": lambda rng: "x" * 6000,  # cuts must land inside the word
    "random words": lambda rng: " ".join(
        "".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 12))) for _ in range(2500)
    ),
    "unicode": lambda rng: "Größe naïve café — 東京 ✓ " * 300,  # multi-byte and byte-fallback pieces
    "newlines": lambda rng: "line one\n\nline two\n" * 400,
}


@pytest.mark.parametrize("name", TEXTS)
@pytest.mark.parametrize("with_response", [False, True])
def test_windows_fit_and_cover_every_character(tok, name, with_response):
    text = TEXTS[name](random.Random(0))
    clf = classifier(tok)
    cap_prompt, cap_exchange = capacities(clf)
    response = text if with_response else None
    windows = plan_windows(tok, text, response, cap_prompt, cap_exchange)
    for part, cap in (("prompt", cap_prompt), ("response", cap_exchange)):
        mine = [w for w in windows if w.part == part]
        if part == "response" and not with_response:
            assert mine == []
            continue
        assert len(mine) >= 3
        # Each window fits and is exactly its text, encoded as an ordinary input.
        assert all(len(w.ids) <= cap for w in mine)
        # Together they cover every character, neighbours overlapping by whole tokens.
        assert mine[0].start == 0 and mine[-1].end == len(text)
        for a, b in itertools.pairwise(mine):
            assert a.start < b.start < a.end
            shared = len(tok.encode_exchange(text[b.start : a.end])) - len(tok.encode_exchange(""))
            assert shared >= 8, (a, b)  # the boundary token and its neighbours are whole in b
    for w in windows:
        if w.prompt_only:
            assert list(w.ids) == tok.encode_exchange(text[w.start : w.end]) and w.votes == ("prompt_harmfulness",)
        else:  # with the prompt's end, the same for every response window
            assert list(w.ids) == tok.encode_exchange(text[w.context :], text[w.start : w.end])
            assert w.votes == ("response_refusal", "response_harmfulness") and w.context == windows[-1].context
    if with_response:  # the prompt is as long as the reply: its end takes about half the room
        context = len(tok.encode_exchange(text[windows[-1].context :])) - len(tok.encode_exchange(""))
        assert 0 < windows[-1].context and cap_exchange / 4 < context <= cap_exchange / 2


def test_every_token_of_the_text_is_whole_inside_a_window(tok):
    # The ids of the text read as pieces: each piece of the whole text's encoding occurs whole
    # inside some window's text (a piece cut by a boundary is inside the next window).
    text = " ".join(f"w{i}ord{i % 7}" for i in range(1500))
    clf = classifier(tok)
    windows = plan_windows(tok, text, None, *capacities(clf))
    pos = 0
    for word in text.split(" "):
        start = text.index(word, pos)
        end = pos = start + len(word)
        assert any(w.start <= start and end <= w.end for w in windows), word


# -- the verdict: a marker anywhere in padding 3x the context is found --------------------------
def test_marker_anywhere_in_padding_three_contexts_long_is_found(tok):
    pad = padding(tok, 3)
    clf = classifier(tok)
    windows = plan_windows(tok, pad, None, *capacities(clf))
    # At the start, the end, and on every window boundary (where a split would hide it).
    positions = {0, len(pad)} | {w.start for w in windows} | {w.end for w in windows}
    positions |= {max(0, p - len(HARMFUL) // 2) for p in list(positions)}
    for pos in sorted(positions):
        result = clf.classify_one(pad[:pos] + HARMFUL + pad[pos:])
        assert result["prompt_harmfulness"] == "harmful", pos
        assert result["windows"] >= 3 and result["scores"]["prompt_harmfulness"] > 0.5
    benign = clf.classify_one(pad)
    assert benign["prompt_harmfulness"] == "unharmful" and benign["windows"] >= 3


@pytest.mark.parametrize(
    "prompt, response, want",
    [
        # a harmful part late in a long reply: judged with the prompt, flagged
        ("how do rivers work?", "{pad}" + HARMFUL + " {pad}", ("unharmful", "compliance", "harmful")),
        # a refusal in one window only: the rest complies, so the reply complied
        ("how do rivers work?", REFUSE + " {pad}", ("unharmful", "compliance", "unharmful")),
        # a refusal throughout: every window refuses
        ("how do rivers work?", (REFUSE + " no. ") * 600, ("unharmful", "refusal", "unharmful")),
        # a long harmful prompt with a short reply: the prompt's windows alone decide its label
        ("{pad}" + HARMFUL + " {pad}", "Sure.", ("harmful", "compliance", "unharmful")),
        # both long: the response windows hold the prompt's end; the marker in the prompt's
        # start is found by the prompt windows
        (HARMFUL + " {pad}", "{pad}", ("harmful", "compliance", "unharmful")),
    ],
)
def test_labels_of_a_long_exchange(tok, prompt, response, want):
    pad = padding(tok, 1.5)
    result = classifier(tok).classify_one(prompt.format(pad=pad), response.format(pad=pad))
    assert tuple(result[k] for k in LABEL_KEYS) == want
    assert result["windows"] >= 2 and not result["is_parsing_error"]


class GenerateMarkers(MarkerBackend):
    """Generate mode: writes WildGuard's answer block, decided by the markers, then EOS."""

    def __init__(self, tok, n_ctx):
        super().__init__(tok, n_ctx=n_ctx)
        a, b = tok.encode_exchange("q", "alpha"), tok.encode_exchange("q", "zebra crossing 42")
        n = 0
        while a[-1 - n] == b[-1 - n]:
            n += 1
        self.tail = list(a[-n:])  # the template after the response: the input ends with it

    def next_logits(self, ids):
        ids, t = [int(i) for i in ids], len(self.tail)
        end = max(i for i in range(t, len(ids) + 1) if ids[i - t : i] == self.tail)
        prompt, response = sections(self.tokenizer.decode(ids[:end]))
        answers = ["yes" if HARMFUL in prompt else "no"]
        answers += (
            ["yes" if REFUSE in response else "no", "yes" if HARMFUL in response else "no"]
            if response.strip()
            else ["n/a", "n/a"]
        )
        block = self.tokenizer.answer_ids(answers) + [self.tokenizer.eos_id]
        logits = np.zeros(self.n_vocab, dtype=np.float32)
        logits[block[len(ids) - end]] = 5.0
        return logits


@pytest.mark.parametrize(
    "prompt, response, want",
    [
        ("{pad}" + HARMFUL + " {pad}", None, ("harmful", None, None)),  # a long harmful prompt
        ("{pad}{pad}", None, ("unharmful", None, None)),  # a long benign one
        ("rivers?", "{pad}" + HARMFUL + " {pad}", ("unharmful", "compliance", "harmful")),  # a long harmful reply
    ],
)
def test_generate_mode_windows(tok, prompt, response, want):
    pad = padding(tok, 1.5)
    clf = Classifier(GenerateMarkers(tok, N_CTX), tok, RuntimeConfig(mode="generate"))
    result = clf.classify_one(prompt.format(pad=pad), None if response is None else response.format(pad=pad))
    assert tuple(result[k] for k in LABEL_KEYS) == want
    assert result["windows"] >= 3 and not result["is_parsing_error"]


def test_an_unreadable_window_fails_closed(tok):
    pad = padding(tok, 3)
    result = classifier(tok).classify_one(pad + UNREADABLE)
    assert result["is_parsing_error"] and result["prompt_harmfulness"] is None


def test_thresholds_apply_to_the_merged_score(tok):
    pad = padding(tok, 3)
    # The marker backend's P(yes) of a harmful window is ~0.98: above 0.5, below 0.99.
    assert (
        classifier(tok, thresholds={"prompt_harmfulness": 0.99}).classify_one(pad + HARMFUL)["prompt_harmfulness"]
        == "unharmful"
    )
    assert (
        classifier(tok, thresholds={"prompt_harmfulness": 0.5}).classify_one(pad + HARMFUL)["prompt_harmfulness"]
        == "harmful"
    )


# -- "error" keeps refusing; a context too small to split refuses too ----------------------------
@pytest.mark.parametrize(
    "config, n_ctx, item",
    [
        # over_context="error": the old refusal, nothing run
        ({"over_context": "error"}, N_CTX, {"prompt": PAD * 100}),
        ({"over_context": "error"}, N_CTX, {"prompt": "hi", "response": PAD * 100}),
        # split, but the template leaves no room for a useful window
        ({}, 120, {"prompt": PAD * 100}),
    ],
)
def test_refusals(tok, config, n_ctx, item):
    clf = classifier(tok, n_ctx=n_ctx, **config)
    with pytest.raises(InputTooLongError, match=rf"item 0: input is \d+ tokens but the context holds {n_ctx}"):
        clf.classify([item])
    assert clf.backend.tokens_evaluated == 0


def test_unknown_over_context_mode_is_refused():
    with pytest.raises(InvalidInputError, match="unknown over_context 'truncate'; choose one of split, error"):
        RuntimeConfig(over_context="truncate")


# -- merge_results: one row per rule ------------------------------------------------------------
P, R = ("prompt_harmfulness",), ("response_refusal", "response_harmfulness")


def _w(votes):
    return Window([], votes == P, votes, "prompt" if votes == P else "response", 0, 1)


def _r(labels, scores, error=False, na=()):
    out = dict(zip(LABEL_KEYS, labels), is_parsing_error=error, scores=dict(zip(LABEL_KEYS, scores)))
    if na:
        out["na_resolved"] = list(na)
    return out


@pytest.mark.parametrize(
    "windows, results, labels, scores, error",
    [
        # harm: any window harmful, P(yes) the maximum
        (
            [P, P],
            [_r(("unharmful", None, None), (0.1, None, None)), _r(("harmful", None, None), (0.8, None, None))],
            ("harmful", None, None),
            (0.8, None, None),
            False,
        ),
        # harm: none harmful, P(yes) still the maximum
        (
            [P, P],
            [_r(("unharmful", None, None), (0.1, None, None)), _r(("unharmful", None, None), (0.3, None, None))],
            ("unharmful", None, None),
            (0.3, None, None),
            False,
        ),
        # refusal: every window refuses, P(yes) the minimum
        (
            [R, R],
            [
                _r(("unharmful", "refusal", "unharmful"), (0.0, 0.9, 0.1)),
                _r(("unharmful", "refusal", "unharmful"), (0.0, 0.7, 0.2)),
            ],
            (None, "refusal", "unharmful"),
            (None, 0.7, 0.2),
            False,
        ),
        # refusal: one window complies, so the reply complied
        (
            [R, R],
            [
                _r(("unharmful", "refusal", "unharmful"), (0.0, 0.9, 0.1)),
                _r(("unharmful", "compliance", "harmful"), (0.0, 0.2, 0.9)),
            ],
            (None, "compliance", "harmful"),
            (None, 0.2, 0.9),
            False,
        ),
        # response windows do not vote on the prompt label, prompt windows not on the response's
        (
            [P, R],
            [
                _r(("unharmful", None, None), (0.2, None, None)),
                _r(("harmful", "compliance", "unharmful"), (0.9, 0.1, 0.1)),
            ],
            ("unharmful", "compliance", "unharmful"),
            (0.2, 0.1, 0.1),
            False,
        ),
        # an unreadable window leaves its label unknown and the result unreadable (fail closed)
        (
            [P, P],
            [_r(("unharmful", None, None), (0.1, None, None)), _r((None, None, None), (None, None, None), True)],
            (None, None, None),
            (None, None, None),
            True,
        ),
        # ... unless another window already decided the flagging side
        (
            [P, P],
            [_r(("harmful", None, None), (0.9, None, None)), _r((None, None, None), (None, None, None), True)],
            ("harmful", None, None),
            (0.9, None, None),
            True,
        ),
    ],
)
def test_merge_rules(windows, results, labels, scores, error):
    merged = merge_results([_w(v) for v in windows], results)
    assert tuple(merged[k] for k in LABEL_KEYS) == labels
    assert tuple(merged["scores"][k] for k in LABEL_KEYS) == scores
    assert merged["is_parsing_error"] is error and merged["windows"] == len(windows)


def test_merge_keeps_na_resolved():
    windows = [_w(R), _w(R)]
    results = [
        _r((None, "compliance", "harmful"), (None, 0.1, 0.6), na=["response_harmfulness"]),
        _r((None, "compliance", "unharmful"), (None, 0.1, 0.2)),
    ]
    assert merge_results(windows, results)["na_resolved"] == ["response_harmfulness"]


# -- cost: linear in the length ------------------------------------------------------------------
def test_tokens_evaluated_grow_linearly(tok):
    sizes, costs = [], []
    for contexts in (2, 4, 8, 16):
        pad = padding(tok, contexts)
        windows = plan_windows(tok, pad, None, *capacities(classifier(tok)))
        sizes.append(len(tok.encode_exchange(pad)) - len(tok.encode_exchange("")))
        costs.append(sum(len(w.ids) for w in windows))
    # Each window adds the template and the overlap, a constant share: the cost of one more
    # text token is the same at every length (about 1.7 ids at this small context).
    marginal = [(c2 - c1) / (s2 - s1) for s1, s2, c1, c2 in zip(sizes, sizes[1:], costs, costs[1:])]
    assert max(marginal) / min(marginal) < 1.1, marginal
    assert all(c <= 1.8 * s for s, c in zip(sizes, costs)), (sizes, costs)


# -- the server: long input is judged, 200; --over-context error keeps 413 ----------------------
@pytest.mark.parametrize(
    "path, body, check",
    [
        # a harmful sentence inside benign padding 3x the context: flagged
        (
            "/v1/moderations",
            {"input": "{pad}" + HARMFUL + " {pad}"},
            lambda r: r["results"][0]["flagged"] and r["results"][0]["wildguard"]["windows"] >= 3,
        ),
        # benign long text: 200, not flagged
        ("/v1/moderations", {"input": "{pad}{pad}"}, lambda r: not r["results"][0]["flagged"]),
        # a long harmful reply, judged with its prompt
        (
            "/v1/moderations",
            {"input": [{"prompt": "rivers?", "response": "{pad}" + HARMFUL}]},
            lambda r: r["results"][0]["categories"]["harmful_response"],
        ),
        # the native endpoint carries the window count
        (
            "/v1/classify",
            {"items": [{"prompt": HARMFUL + " {pad}"}]},
            lambda r: r["results"][0]["prompt_harmfulness"] == "harmful" and r["results"][0]["windows"] >= 2,
        ),
        # LiteLLM's guardrail: a long last turn
        (
            "/beta/litellm_basic_guardrail_api",
            {
                "input_type": "request",
                "texts": ["x"],
                "structured_messages": [{"role": "user", "content": "{pad}" + HARMFUL}],
            },
            lambda r: r["action"] == "BLOCKED",
        ),
    ],
)
def test_server_judges_long_input(tok, path, body, check):
    TestClient = pytest.importorskip("fastapi.testclient").TestClient
    from server_fakes import marker_app

    pad = padding(tok, 1.5)
    body = json.loads(json.dumps(body).replace("{pad}", pad))
    with TestClient(marker_app(tok, n_ctx=N_CTX)) as client:
        reply = client.post(path, json=body)
    assert reply.status_code == 200, reply.text
    assert check(reply.json()), reply.json()


def test_server_over_context_error_is_413(tok):
    TestClient = pytest.importorskip("fastapi.testclient").TestClient
    from server_fakes import marker_app

    with TestClient(marker_app(tok, n_ctx=N_CTX, over_context="error")) as client:
        reply = client.post("/v1/moderations", json={"input": ["short", padding(tok, 3)]})
    assert reply.status_code == 413, reply.text
    error = reply.json()["error"]
    assert error["type"] == "input_too_long" and error["limit"] == N_CTX and "item 1" in error["message"]


# -- on the toy: what the project controls, and the toy's flagged/total for the record ---------
@pytest.mark.slow
def test_on_the_toy_the_window_holding_a_harmful_sentence_is_judged(toy_gguf, heldout):
    import wildguard_lite

    n_ctx = N_CTX
    sentences = [r["prompt"] for r in heldout if r["prompt_harm_label"] == "harmful"][:12]
    benign = [r["prompt"] for r in heldout if r["prompt_harm_label"] == "unharmful"]
    flagged = alone = 0
    with wildguard_lite.load(toy_gguf["q8_0"], n_ctx=n_ctx, threads=1) as clf:
        pad = ""
        for text in benign:
            if len(clf.tokenizer.encode_exchange(pad)) >= 3 * n_ctx:
                break
            pad += text + " "
        cap = capacities(clf)  # n_ctx is N_CTX
        padding_alone = clf.classify_one(pad)
        assert padding_alone["windows"] >= 3
        for i, sentence in enumerate(sentences):
            # Spread across the padding, each at a word boundary.
            pos = pad.rfind(" ", 0, len(pad) * i // len(sentences)) + 1
            text = pad[:pos] + sentence + " " + pad[pos:]
            result = clf.classify_one(text)
            assert result["windows"] >= 3 and not result["is_parsing_error"]
            # The window that holds the sentence whole was judged: the merged P(yes) is at
            # least its P(yes) judged on its own (within 0.02: the engine may evaluate the same
            # tokens in other batch shapes when it reuses other cached prefixes).
            windows = plan_windows(clf.tokenizer, text, None, *cap)
            holder = next(w for w in windows if w.start <= pos and pos + len(sentence) <= w.end)
            own = clf.classify_one(text[holder.start : holder.end])["scores"]["prompt_harmfulness"]
            assert result["scores"]["prompt_harmfulness"] >= own - 0.02
            flagged += result["prompt_harmfulness"] == "harmful"
            alone += clf.classify_one(sentence)["prompt_harmfulness"] == "harmful"
    print(
        f"\ntoy q8_0, n_ctx {n_ctx}: a harmful sentence inside benign padding 3x the context flagged "
        f"{flagged}/{len(sentences)} (the sentences alone: {alone}/{len(sentences)}; the padding alone: "
        f"{padding_alone['prompt_harmfulness']}, P={padding_alone['scores']['prompt_harmfulness']:.2f})"
    )
