"""Inputs longer than the context, judged whole: overlapping windows (docs/long-inputs.md).

A text that does not fit is cut into windows that each fit, overlapping by
`WINDOW_OVERLAP_TOKENS`, so every character (and every token, whole) lies inside at least one
window and a sentence up to the overlap long lies whole inside one. Each window is an ordinary
WildGuard input; `merge_results` folds their verdicts into one.

What a window judges, per label:
- `prompt_harmfulness`: prompt windows alone (prompt-only inputs), as WildGuard judges a request.
- `response_harmfulness`, `response_refusal`: response windows, each with the prompt, or its
  end (the part the reply answers) when the prompt is long too.
- merged: harmful when any window says harmful, P(yes) the maximum; a refusal only when every
  response window reads refusal, P(yes) the minimum (a reply that complies anywhere complied).

Pure functions over the tokenizer's public `encode_exchange`; no engine here.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .contract import LABEL_KEYS, LABEL_VALUES
from .defaults import WINDOW_OVERLAP_TOKENS
from .errors import InputTooLongError

PROMPT_LABELS = LABEL_KEYS[:1]
RESPONSE_LABELS = LABEL_KEYS[1:]
REFUSAL_LABEL = LABEL_KEYS[1]  # the one label merged by "every window" (min) instead of "any" (max)
# Below this many tokens of room for the text itself, windows would be mostly overlap.
MIN_WINDOW_TOKENS = 16
# A cut moves back at most this share of a window to land on whitespace (not inside a word).
SNAP_SHARE = 0.1
# Characters read to estimate a text's characters per token (where to try the first cut).
SAMPLE_CHARS = 16384
# Tokens counted beyond the overlap: a piece's tokens alone and inside the window may differ at
# its edges (a merge across the cut), and the guarantee is about the passage in the window.
OVERLAP_MARGIN = 4
# A window's start moves back at most this far to land on a word start.
SNAP_BACK_CHARS = 64
# Tokens of spare overlap tolerated before the start is moved forward again.
WORD_TOKENS = 8


@dataclass(frozen=True)
class Window:
    """One input to classify: its ids, whether it is prompt-only, the labels it decides, the
    characters it covers (`part` is "prompt" or "response"; `start:end` in that text) and, for
    a response window, where the prompt it is paired with starts (`prompt[context:]`)."""

    ids: Sequence[int]  # array('i'): 4 bytes a token (a list holds a 28-byte int object per token)
    prompt_only: bool
    votes: tuple[str, ...]
    part: str
    start: int
    end: int
    context: int = 0


def plan_windows(
    tokenizer,
    prompt: str,
    response: str | None,
    capacity_prompt_only: int,
    capacity_exchange: int,
    overlap: int = WINDOW_OVERLAP_TOKENS,
) -> list[Window]:
    """The windows that judge an exchange too long for one input.

    Args:
        tokenizer: a `WildGuardTokenizer` (only `encode_exchange` is used).
        prompt, response: the exchange (response None or "" for a prompt alone).
        capacity_prompt_only / capacity_exchange: the most ids one prompt-only / exchange input
            may have (the context minus the room the answer needs).
        overlap: tokens shared by neighbouring windows (capped at a quarter of a window).

    Raises:
        `ContextTooSmall` (an `InputTooLongError`): the context holds no useful window.
    """
    enc = tokenizer.encode_exchange
    windows = [
        Window(array("i", ids), True, PROMPT_LABELS, "prompt", s, e)
        for s, e, ids in split_spans(prompt, enc, capacity_prompt_only, overlap)
    ]
    if not response:
        return windows
    room = capacity_exchange - len(enc("", ""))
    _check_room(room)
    # The response gets up to half the room, the prompt (its end when long) the rest.
    response_alone = min(length(response, lambda t: enc("", t), room), room // 2)
    cut = tail_start(prompt, enc, capacity_exchange - response_alone)
    for s, e, ids in split_spans(response, lambda t: enc(prompt[cut:], t), capacity_exchange, overlap):
        windows.append(Window(array("i", ids), False, RESPONSE_LABELS, "response", s, e, cut))
    return windows


def merge_results(windows: Sequence[Window], results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One verdict from the windows' verdicts (thresholds not applied: apply them after).

    Harm labels: harmful when any voting window says harmful, P(yes) the maximum. Refusal:
    refusal only when every voting window says refusal, P(yes) the minimum. A label some window
    could not read is unknown (None) unless another window already decided the flagging side;
    `is_parsing_error` is set when any window's verdict was unreadable. `windows` is the count.
    """
    merged: dict[str, Any] = {key: None for key in LABEL_KEYS}
    scores: dict[str, float | None] = {key: None for key in LABEL_KEYS}
    resolved: list[str] = []
    for key in LABEL_KEYS:
        votes = [r for w, r in zip(windows, results) if key in w.votes]
        if not votes:
            continue
        labels = [r.get(key) for r in votes]
        values = [s for s in ((r.get("scores") or {}).get(key) for r in votes) if s is not None]
        # The side one window decides alone: "yes" for harm, "no" (compliance) for refusal.
        decisive = LABEL_VALUES[key]["no" if key == REFUSAL_LABEL else "yes"]
        if decisive in labels:
            merged[key] = decisive
        elif None not in labels:
            merged[key] = labels[0]
        if values and merged[key] is not None:
            scores[key] = min(values) if key == REFUSAL_LABEL else max(values)
        for r in votes:
            if key in r.get("na_resolved", ()) and key not in resolved:
                resolved.append(key)
    merged["is_parsing_error"] = any(bool(r.get("is_parsing_error")) for r in results)
    merged["scores"] = scores
    if resolved:
        merged["na_resolved"] = resolved
    merged["windows"] = len(windows)
    return merged


def split_spans(
    text: str, encode: Callable[[str], list[int]], capacity: int, overlap: int
) -> list[tuple[int, int, list[int]]]:
    """Character spans of `text` with their ids, `encode(piece)` being the input that holds a
    piece: each at most `capacity` ids, neighbours sharing about `overlap` tokens, together
    covering every character. One span when the text fits."""
    base = len(encode(""))
    room = capacity - base
    per_token = chars_per_token(text, encode, base)
    if len(text) <= 2 * room * per_token:  # may fit: try it whole
        ids = encode(text)
        if len(ids) <= capacity:
            return [(0, len(text), ids)]
    _check_room(room)
    overlap = max(1, min(overlap, room // 4))
    spans: list[tuple[int, int, list[int]]] = []
    start = 0
    while True:
        end = _cut(text, start, start + max(1, int(room * per_token)))
        ids = encode(text[start:end])
        while len(ids) > capacity:  # the guess was long: shrink in proportion, at least a character
            shrunk = int((end - start) * room / max(1, len(ids) - base) * 0.97)
            end = _cut(text, start, start + max(1, min(end - start - 1, shrunk)))
            ids = encode(text[start:end])
        if end < len(text) and len(ids) < 0.9 * capacity:  # the guess was short: one more try
            longer = _cut(text, start, start + int((end - start) * room / max(1, len(ids) - base) * 0.97))
            more = encode(text[start:longer]) if longer > end else ids
            if len(more) <= capacity:
                end, ids = max(end, longer), more
        spans.append((start, end, ids))
        if end >= len(text):
            return spans
        # The next window starts `overlap` tokens before this one's end, counted (not estimated
        # from characters: CJK or emoji before English would make that a few tokens), at a word
        # start; always after this window's start and before its end, so no character is skipped.
        start = step_back(text, start, end, encode, base, overlap)


def step_back(text: str, start: int, end: int, encode: Callable[[str], list[int]], base: int, overlap: int) -> int:
    """Where the window after `text[start:end]` starts: the latest word start (or, without one
    near, character) whose text up to `end` is at least `overlap` + OVERLAP_MARGIN tokens,
    counted by encoding it; `start + 1` when the window holds fewer."""
    want = overlap + OVERLAP_MARGIN
    lowest = start + 1

    def tokens(at: int) -> int:
        return len(encode(text[at:end])) - base

    # A guess from the window's density, then measured: move back while short (in proportion
    # to what is missing), so the count is exact wherever the script changes.
    at = max(lowest, end - max(1, int(want * (end - start) / max(1, len(encode(text[start:end])) - base))))
    have = tokens(at)
    while have < want and at > lowest:
        per_token = (end - at) / max(1, have)
        at = max(lowest, at - max(1, int((want - have) * per_token * 1.25)))
        have = tokens(at)
    # Then forward while a word's worth of tokens is spare (the guess or a step went far back).
    while have > want + WORD_TOKENS:
        ahead = min(end - 1, at + max(1, int((have - want - WORD_TOKENS) * (end - at) / have)))
        if tokens(ahead) < want or ahead <= at:
            break
        at, have = ahead, tokens(ahead)
    return _snap_word_start(text, at, lowest)


def tail_start(text: str, encode: Callable[[str], list[int]], capacity: int) -> int:
    """Where the end of `text` starts (at a word) that fits an input of at most `capacity`
    ids (`encode(piece)` being the input holding a piece); 0 when the whole text fits."""
    base = len(encode(""))
    per_token = chars_per_token(text, encode, base)
    start = max(0, len(text) - int((capacity - base) * per_token * 1.5))
    if start == 0 and len(encode(text)) <= capacity:
        return 0
    while start < len(text) and len(encode(text[start:])) > capacity:
        start += max(1, (len(text) - start) // 20)
    start = min(len(text), start)
    return _snap_forward(text, start, min(len(text), start + 64))


def length(text: str, encode: Callable[[str], list[int]], limit: int) -> int:
    """Tokens of `text` (`encode(piece)` minus the ids holding no text), or `limit` when it is
    clearly longer (a long text is not encoded whole just to learn that)."""
    base = len(encode(""))
    if len(text) > 2 * limit * chars_per_token(text, encode, base):
        return limit
    return min(limit, len(encode(text)) - base)


def chars_per_token(text: str, encode: Callable[[str], list[int]], base: int) -> float:
    """Characters per token of `text`, from its first SAMPLE_CHARS characters (to guess where a
    cut falls; every window is measured exactly)."""
    sample = text[:SAMPLE_CHARS]
    return max(1, len(sample)) / max(1, len(encode(sample)) - base)


def _cut(text: str, start: int, end: int) -> int:
    """A window's end: the text's end, or moved back to whitespace (not inside a word)."""
    return len(text) if end >= len(text) else _snap_back(text, start, end)


def _snap_back(text: str, start: int, end: int) -> int:
    """Move a cut back to just after whitespace, within SNAP_SHARE of the window."""
    floor = end - int((end - start) * SNAP_SHARE)
    for i in range(end, max(start + 1, floor), -1):
        if text[i - 1].isspace():
            return i
    return end


def _snap_word_start(text: str, at: int, lowest: int) -> int:
    """Move a window's start back (never forward: that would shrink the overlap) to a word
    start, at most SNAP_BACK_CHARS and never below `lowest`; unmoved where no word starts."""
    for i in range(at, max(lowest, at - SNAP_BACK_CHARS) - 1, -1):
        if i == 0 or text[i - 1].isspace():
            return i
    return at


def _snap_forward(text: str, start: int, limit: int) -> int:
    """Move a window's start forward to a word start, never past `limit` - 1."""
    for i in range(start, limit):
        if i == 0 or text[i - 1].isspace():
            return i
    return start


class ContextTooSmall(InputTooLongError):
    """Not even a small window fits: the caller reports the input as too long."""

    def __init__(self, room: int):
        super().__init__(MIN_WINDOW_TOKENS, max(0, room), "windows")


def _check_room(room: int) -> None:
    if room < MIN_WINDOW_TOKENS:
        raise ContextTooSmall(room)
