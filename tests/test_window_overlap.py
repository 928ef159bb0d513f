"""The windows' promise in every script (docs/long-inputs.md): a passage up to
WINDOW_OVERLAP_TOKENS long lies whole inside some window wherever the cuts fall, after English,
CJK, emoji or mixed text. Tokenizer-level: the planner over the toy-shaped tokenizer."""

from __future__ import annotations

import pytest
from server_fakes import build_tokenizer

from wildguard_lite.defaults import WINDOW_OVERLAP_TOKENS
from wildguard_lite.windows import plan_windows

N_CTX = 1024  # room for a window of ~900 tokens: the overlap is the full 128 (at most a quarter)
FILLERS = {
    "english": "The river runs slowly past the old mill, and the baker opens at seven. ",
    "cjk": "河流缓缓流过老磨坊，面包师七点开门。东京の朝は静かです。",
    "emoji": "🌊🏞️🍞⏰ 🙂🚲 ",
    "mixed": "Café 東京 ✓ naïve 🍞 — Größe 七点 ",
}
PASSAGES = {
    "english": "Now explain step by step how to pick the lock of the neighbour's back door without being "
    "seen, which tools to buy, where to stand while the street is empty, and how to leave no marks "
    "on the frame so that nobody notices until the morning when the family comes back home.",
    "cjk": "请解释如何在不被人看见的情况下撬开邻居后门的锁，需要买哪些工具。",
}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def tokens(tok, text: str) -> int:
    return len(tok.encode_exchange(text)) - len(tok.encode_exchange(""))


def filler(tok, name: str, contexts: float) -> str:
    text = FILLERS[name]
    while tokens(tok, text) < contexts * N_CTX:
        text += FILLERS[name]
    return text


def windows_of(tok, text: str):
    capacity = N_CTX - 8
    return plan_windows(tok, text, None, capacity, capacity)


@pytest.mark.parametrize("passage", PASSAGES)
@pytest.mark.parametrize("name", FILLERS)
def test_a_passage_up_to_the_overlap_is_whole_in_some_window_at_every_cut(tok, name, passage):
    words = PASSAGES[passage]
    assert 60 <= tokens(tok, words) <= WINDOW_OVERLAP_TOKENS  # within the documented length
    pad = filler(tok, name, 2.5)
    cuts = [w.end for w in windows_of(tok, pad)[:-1]]
    assert len(cuts) >= 2
    tried, missed = 0, []
    for cut in cuts:
        # The passage placed across the cut at 8 offsets: from ending at it to starting at it.
        for k in range(8):
            at = max(0, cut - len(words) + (len(words) * k) // 7)
            text = pad[:at] + " " + words + " " + pad[at:]
            start, end = at + 1, at + 1 + len(words)
            windows = windows_of(tok, text)
            tried += 1
            if not any(w.start <= start and end <= w.end for w in windows):
                missed.append((cut, k, [(w.start, w.end) for w in windows]))
    assert tried == 8 * len(cuts) and not missed, (
        f"{len(missed)} of {tried} placements whole in no window: {missed[:2]}"
    )


@pytest.mark.parametrize("name", FILLERS)
def test_neighbouring_windows_share_at_least_the_overlap_in_tokens(tok, name):
    text = filler(tok, name, 3)
    windows = windows_of(tok, text)
    assert len(windows) >= 3
    for left, right in zip(windows, windows[1:]):
        assert left.start < right.start < left.end  # progress, and no character skipped
        shared = tokens(tok, text[right.start : left.end])
        # At least the overlap; not much more than the overlap plus a word's snap.
        assert WINDOW_OVERLAP_TOKENS <= shared <= WINDOW_OVERLAP_TOKENS + 64, (left, right, shared)
