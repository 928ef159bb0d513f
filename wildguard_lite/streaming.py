"""Streaming moderation: check an assistant's response while it is being generated.

    >>> stream = clf.stream("How do I pick a lock?")
    >>> for chunk in llm_chunks:
    ...     verdict = stream.feed(chunk)          # None unless a check ran
    ...     if verdict and verdict["flagged"]:
    ...         break                              # stop showing the response
    >>> final = stream.close()                    # the verdict on the complete response

Each check classifies the exchange (prompt + response so far) exactly as `classify` would: the
exchange is re-tokenized whole, so text that merges with the last token of the previous check
(a word split across chunks) gets the ids a one-shot call would give, and the engine keeps the
KV cache of the longest common token prefix. A check therefore evaluates only the new
response tokens (plus the one or two that merged), WildGuard's constant template tail, the
three cues and two answers, in one engine call when the model answers as it did last time
(`Classifier.score_ids`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from .backends.base import Interrupt
from .contract import LABEL_KEYS, LABEL_VALUES, check_text, validate_item
from .errors import InvalidInputError
from .protocols import ClassifierLike

# A check runs once this many new response tokens have arrived (docs/streaming.md: the
# cost of a check is this plus a constant ~30 tokens; 16 keeps the flag within one or two
# sentences of harmful text while the constant stays under 2/3 of each check).
DEFAULT_INTERVAL_TOKENS = 16
# Flag on the first harmful check: a flag that waits for a second check shows the user one
# more interval of harmful text, and close() gives the final word anyway.
DEFAULT_CONSECUTIVE = 1
DEFAULT_LABEL = "response_harmfulness"


@dataclass(frozen=True)
class StreamRule:
    """When a stream is flagged: `label` reads "yes" on `consecutive` checks in a row.

    Args:
        label: which of the three labels to watch (default: response_harmfulness).
        threshold: P(yes) at or above which a check counts; None (default) uses the check's
            label, i.e. the classifier's own thresholds or WildGuard's argmax.
        consecutive: how many checks in a row must count (default 1).

    A check whose answer cannot be read (`is_parsing_error` with the watched label unknown)
    counts as a hit: an unreadable verdict never reads as safe. Once flagged, a stream stays
    flagged.
    """

    label: str = DEFAULT_LABEL
    threshold: float | None = None
    consecutive: int = DEFAULT_CONSECUTIVE

    def __post_init__(self):
        if self.label not in LABEL_KEYS:
            raise InvalidInputError(
                f"unknown label '{self.label}' in the stream rule; choose from {', '.join(LABEL_KEYS)}"
            )
        t = self.threshold
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0):
            raise InvalidInputError(f"stream rule threshold must be a number from 0 to 1 or None, got {t!r}")
        if isinstance(self.consecutive, bool) or not isinstance(self.consecutive, int) or self.consecutive < 1:
            raise InvalidInputError(f"stream rule 'consecutive' must be a positive integer, got {self.consecutive!r}")

    def hit(self, verdict: dict[str, Any]) -> bool:
        """Whether one check's verdict counts toward the flag."""
        label = verdict.get(self.label)
        if label is None and verdict.get("is_parsing_error"):
            return True
        if self.threshold is None:
            return label == LABEL_VALUES[self.label]["yes"]
        score = verdict["scores"].get(self.label)
        return score is not None and score >= self.threshold


class ResponseStream:
    """One response being moderated as it streams; made by `Classifier.stream(prompt)`.

    Feed it from one thread (a stream is a sequence of chunks; calls from two threads at
    once are refused). Checks run inside `feed`: while one runs, the caller is not reading
    its LLM stream, so the text that arrives meanwhile waits in the LLM client's buffer and
    the next `feed` takes all of it into one check. Checks therefore never fall behind:
    a faster stream simply gets fewer, larger checks.

    Attributes:
        response: the response text fed so far.
        verdict: the last check's verdict (None before the first).
        flagged / flagged_at: whether the rule fired, and at how many response tokens.
        checks: how many checks ran.
    """

    def __init__(
        self, classifier: ClassifierLike, prompt: str, rule: StreamRule | None = None, interval: int | None = None
    ):
        validate_item({"prompt": prompt})
        interval = DEFAULT_INTERVAL_TOKENS if interval is None else interval
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise InvalidInputError(f"stream interval must be a positive number of tokens, got {interval!r}")
        if rule is not None and not isinstance(rule, StreamRule):
            raise InvalidInputError(
                f"rule must be a wildguard_lite.streaming.StreamRule, got {type(rule).__name__}; "
                "e.g. StreamRule(label='response_harmfulness', threshold=0.3)"
            )
        self.classifier = classifier
        self.prompt = prompt
        self.rule = rule or StreamRule()
        self.interval = interval
        self.response = ""
        self.verdict: dict[str, Any] | None = None
        self.flagged = False
        self.flagged_at: int | None = None
        self.checks = 0
        tok = classifier.tokenizer
        self._empty = len(tok.encode_exchange("", ""))
        self._prompt_only = len(tok.encode_exchange(prompt, ""))
        self._pending = ""  # text since the last check
        self._unchecked = True  # text (or nothing at all) that no check has seen
        self._answers: list[tuple[int, ...]] | None = None  # the last check's, as the next guess
        self._streak = 0
        self._closed = False
        self._busy = threading.Lock()

    def feed(
        self, text: str, *, cancel: threading.Event | None = None, timeout: float | None = None
    ) -> dict[str, Any] | None:
        """Append response text; run a check when `interval` new tokens have arrived.

        `cancel` / `timeout` stop a check as in `Classifier.classify` (raising
        `ClassificationCancelled` / `ClassificationTimeout`); the text stays in the response,
        unchecked: the next `feed` or `close` checks it.

        Returns:
            The verdict (as `classify`, plus `flagged` and `response_tokens`) when a check
            ran, else None.

        Raises:
            `InputTooLongError`: the exchange no longer fits the context (nothing is cut).
        """
        if not isinstance(text, str):
            raise InvalidInputError(f"feed() takes response text (str), got {type(text).__name__}")
        interrupt = Interrupt.make(cancel, timeout)  # checked before the text joins the response
        with self._guard("feed"):
            if not text:
                return None
            # Checked before it joins the response: a bad chunk must not poison later feeds.
            check_text(text, "feed() text")
            self.response += text
            self._pending += text
            self._unchecked = True
            # The text since the last check, counted alone (short: cheap), may differ by a
            # token from its ids in context: fine for a cadence; the check re-tokenizes all.
            if len(self.classifier.tokenizer.encode_exchange("", self._pending)) - self._empty < self.interval:
                return None
            return self._check(interrupt)

    def close(self, *, cancel: threading.Event | None = None, timeout: float | None = None) -> dict[str, Any]:
        """The final verdict on the complete response (a last check if text is unchecked);
        calling it again returns the same verdict. `cancel` / `timeout` as in `feed` (an
        interrupted close leaves the stream open)."""
        interrupt = Interrupt.make(cancel, timeout)
        with self._guard("close"):
            if not self._closed:
                if self._unchecked or self.verdict is None:
                    self._check(interrupt)
                self._closed = True
            assert self.verdict is not None  # a check ran above
            return self.verdict

    def _guard(self, what: str):
        check_open = getattr(self.classifier, "_check_open", None)
        if check_open is not None:  # a closed classifier refuses every call, short feeds included
            check_open()
        if self._closed and what == "feed":
            raise InvalidInputError("feed() after close(): start a new stream with clf.stream(prompt)")
        if not self._busy.acquire(blocking=False):
            raise InvalidInputError(f"{what}() called while another call runs: feed a stream from one thread")
        return _Release(self._busy)

    def _check(self, interrupt: Interrupt | None = None) -> dict[str, Any]:
        result, self._answers, n_ids = self.classifier.score_exchange(
            self.prompt, self.response, guess=self._answers, interrupt=interrupt
        )
        self.checks += 1
        self._pending = ""
        self._unchecked = False
        self._streak = self._streak + 1 if self.rule.hit(result) else 0
        tokens = n_ids - self._prompt_only
        if not self.flagged and self._streak >= self.rule.consecutive:
            self.flagged, self.flagged_at = True, tokens
        result["flagged"] = self.flagged
        result["response_tokens"] = tokens
        self.verdict = result
        return result


class _Release:
    """Context manager releasing an already-acquired lock."""

    def __init__(self, lock: threading.Lock):
        self._lock = lock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._lock.release()
