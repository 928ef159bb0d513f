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

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .contract import LABEL_KEYS, LABEL_VALUES
from .defaults import WINDOW_OVERLAP_TOKENS
from .errors import InputTooLongError

PROMPT_LABELS = LABEL_KEYS[:1]
RESPONSE_LABELS = LABEL_KEYS[1:]
# Below this many tokens of room for the text itself, windows would be mostly overlap.
MIN_WINDOW_TOKENS = 16
# A cut moves back at most this share of a window to land on whitespace (not inside a word).
SNAP_SHARE = 0.1


@dataclass(frozen=True)
class Window:
    """One input to classify: its ids, whether it is prompt-only, the labels it decides, the
    characters it covers (`part` is "prompt" or "response"; `start:end` in that text) and, for
    a response window, where the prompt it is paired with starts (`prompt[context:]`)."""

    ids: list[int]
    prompt_only: bool
    votes: tuple[str, ...]
    part: str
    start: int
    end: int
    context: int = 0


def plan_windows(tokenizer, prompt: str, response: str | None, capacity_prompt_only: int,
                 capacity_exchange: int, overlap: int = WINDOW_OVERLAP_TOKENS) -> list[Window]:
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
    base_prompt = len(enc(""))
    windows = [Window(enc(prompt[s:e]), True, PROMPT_LABELS, "prompt", s, e)
               for s, e in split_spans(prompt, lambda t: len(enc(t)) - base_prompt,
                                       capacity_prompt_only - base_prompt, overlap)]
    if not response:
        return windows
    room = capacity_exchange - len(enc("", ""))
    _check_room(room)
    # The response gets up to half the room, the prompt (its end when long) the rest.
    response_alone = len(enc("", response)) - len(enc("", ""))
    cut = tail_start(prompt, lambda t: len(enc(t)) - base_prompt, room - min(response_alone, room // 2))
    context = prompt[cut:]
    base = len(enc(context, ""))
    for s, e in split_spans(response, lambda t: len(enc(context, t)) - base, capacity_exchange - base, overlap):
        windows.append(Window(enc(context, response[s:e]), False, RESPONSE_LABELS, "response", s, e, cut))
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
        decisive = LABEL_VALUES[key]["no" if key == "response_refusal" else "yes"]
        if decisive in labels:
            merged[key] = decisive
        elif None not in labels:
            merged[key] = labels[0]
        if values and merged[key] is not None:
            scores[key] = min(values) if key == "response_refusal" else max(values)
        for r in votes:
            if key in r.get("na_resolved", ()) and key not in resolved:
                resolved.append(key)
    merged["is_parsing_error"] = any(bool(r.get("is_parsing_error")) for r in results)
    merged["scores"] = scores
    if resolved:
        merged["na_resolved"] = resolved
    merged["windows"] = len(windows)
    return merged


def split_spans(text: str, count: Callable[[str], int], capacity: int, overlap: int) -> list[tuple[int, int]]:
    """Character spans of `text`, each counting at most `capacity` tokens (`count` measures a
    piece as it will be encoded), neighbours sharing about `overlap` tokens; they cover every
    character. One span when the text fits."""
    total = count(text)
    if total <= capacity:
        return [(0, len(text))]
    _check_room(capacity)
    overlap = max(1, min(overlap, capacity // 4))
    per_token = len(text) / max(1, total)  # characters per token, to guess where a cut falls
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        end = min(len(text), start + max(1, int(capacity * per_token)))
        n = count(text[start:end])
        while n > capacity:  # the guess was long: shrink in proportion, at least one character
            end = start + max(1, min(end - start - 1, int((end - start) * capacity / n * 0.97)))
            n = count(text[start:end])
        if end < len(text):
            end = _snap_back(text, start, end)
        spans.append((start, end))
        if end >= len(text):
            return spans
        # Step back `overlap` tokens (at this window's density) to a word start: the next
        # window starts after this one's start and before its end, so no character is skipped.
        back = max(1, int(overlap * (end - start) / max(1, n)))
        start = _snap_forward(text, max(start + 1, end - back), end)


def tail_start(text: str, count: Callable[[str], int], limit: int) -> int:
    """Where the end of `text` that counts at most `limit` tokens starts (at a word): 0 when
    the whole text fits."""
    n = count(text)
    if n <= limit:
        return 0
    start = len(text) - max(0, int(len(text) * limit / max(1, n)))
    while start < len(text) and count(text[start:]) > limit:
        start += max(1, (len(text) - start) // 20)
    start = min(len(text), start)
    return _snap_forward(text, start, min(len(text), start + 64))


def _snap_back(text: str, start: int, end: int) -> int:
    """Move a cut back to just after whitespace, within SNAP_SHARE of the window."""
    floor = end - int((end - start) * SNAP_SHARE)
    for i in range(end, max(start + 1, floor), -1):
        if text[i - 1].isspace():
            return i
    return end


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
