"""The classifier: WildGuard's contract on top of any Backend."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from .backends.base import Backend, Engine, Interrupt, as_engine
from .config import RuntimeConfig
from .contract import LABEL_KEYS, LABEL_VALUES, validate_item
from .errors import ClassifierClosedError, InputTooLongError
from .generation import fed, generate, p_yes, resolve_na
from .thresholds import apply_thresholds
from .tokenization import WildGuardTokenizer
from .windows import ContextTooSmall, Window, merge_results, plan_windows


@dataclass(frozen=True)
class PlannedItem:
    """An item ready for the engine (`Classifier.plan`): its inputs (ids, prompt_only), one,
    or one per window for an item longer than the context judged in windows (`windows` set)."""

    inputs: tuple[tuple[Sequence[int], bool], ...]  # a window's ids: array('i') (windows.py)
    windows: tuple[Window, ...] | None = None

    @property
    def ids(self) -> Sequence[int]:
        """The first input's ids: the key batch jobs order items by (shared prefixes)."""
        return self.inputs[0][0]

    @property
    def tokens(self) -> int:
        """Input ids the engine is given, windows summed."""
        return sum(len(ids) for ids, _ in self.inputs)


if TYPE_CHECKING:
    from .aio import AsyncResponseStream
    from .streaming import ResponseStream, StreamRule


WHOLE_TEXT_CHARS_PER_TOKEN = 64  # no piece is this long: n_ctx times it goes to windows unencoded


class Classifier:
    """Classifies chat exchanges with WildGuard's exact template and labels."""

    def __init__(self, backend: Engine | Backend, tokenizer: WildGuardTokenizer, config: RuntimeConfig | None = None):
        self.backend = backend  # as given (its own counters and settings)
        # What every call goes through: thread-safe and interruptible. A concurrent engine
        # (llama.cpp: one sequence per caller, calls batched into rounds) takes calls from any
        # thread; a serial Backend (ONNX) is adapted, entered by one call at a time.
        self.engine = as_engine(backend)
        self.tokenizer = tokenizer
        self.config = config or RuntimeConfig()
        tok = tokenizer
        self._cues = [list(c) for c in tok.cue_ids]
        # Score mode evaluates the input, then each cue with the answers before it: a prompt
        # alone only the first cue; an exchange all three cues, the first answer (one token)
        # and the second, which is " n/a" (several tokens) when the model says so.
        self._score_budget_prompt = len(self._cues[0])
        self._score_budget = sum(len(c) for c in self._cues) + 1 + max(1, len(tok.na_ids))
        self._is_answer = {tok.yes_id, tok.no_id}
        self.engine.extension_slack = self._extension_slack()
        # close() waits for the calls in flight and refuses new ones.
        self._state = threading.Condition()
        self._active = 0
        self._closed = False

    # -- public API --------------------------------------------------------------------------
    def classify(
        self,
        items: Sequence[Mapping[str, Any]],
        on_result: Callable[[int, dict[str, Any]], None] | None = None,
        *,
        cancel: threading.Event | None = None,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """Classify exchanges. Thread-safe: calls from several threads share the engine (and
        with the llama.cpp engine run batched together).

        Args:
            items (`list[dict]`): `{"prompt": str, "response": str}` (response optional); never
                mutated.
            on_result (`callable`, *optional*): called with `(index, result)` as each finishes.
            cancel (`threading.Event`, *optional*): set it from another thread to stop the call;
                the engine stops mid-evaluation (llama.cpp) or before its next step (ONNX).
            timeout (`float`, *optional*): seconds; past it the call stops the same way.

        Returns:
            `list[dict]`: per item `prompt_harmfulness`, `response_refusal`,
            `response_harmfulness` (label or `None`), `is_parsing_error` and `scores` (P(yes)
            per answered label, renormalised over yes/no).

        Raises:
            `InvalidInputError`: an item is malformed, or too long for the context with
            `over_context="error"` (with "split", the default, it is judged in overlapping
            windows: wildguard_lite/windows.py); raised before any item is run.
            `ClassificationCancelled` / `ClassificationTimeout`: `cancel` was set / `timeout`
            passed; the classifier stays usable.
        """
        interrupt = Interrupt.make(cancel, timeout)  # checked before anything is planned or run
        with self._call():
            return self._run(self.plan(items), on_result, interrupt)

    def plan(self, items: Sequence[Mapping[str, Any]]) -> list[PlannedItem]:
        """Validate and tokenize items into what the engine runs (`PlannedItem`), without
        running them: the one planning path of `classify`, streams, batch files and Ray.

        Raises:
            `InvalidInputError`: an item is malformed, or too long for the context with
            `over_context="error"` (the message names the item's index).
        """
        return [self.plan_item(item, i) for i, item in enumerate(items)]

    def plan_item(self, item: Mapping[str, Any], index: int | None = None, *, split: bool | None = None) -> PlannedItem:
        """One item's plan: its ids, or for an item longer than the context with
        over_context="split" (or `split=True`) its overlapping windows (wildguard_lite/windows.py).
        `index` names the item in errors."""
        self._check_open()
        prompt, response = validate_item(item, index)
        split = self.config.over_context == "split" if split is None else split
        where, chars = "" if index is None else f"item {index}", len(prompt) + len(response or "")
        if split and chars > self.engine.n_ctx * WHOLE_TEXT_CHARS_PER_TOKEN:  # windows, not encoded whole
            ids: list[int] = []
            exc = InputTooLongError(chars // WHOLE_TEXT_CHARS_PER_TOKEN, self.engine.n_ctx, where)
        else:
            ids = self.tokenizer.encode_exchange(prompt, response)
            budget = self._budget(bool(response))
            if len(ids) + budget <= self.engine.n_ctx:
                return PlannedItem(((ids, not response),))
            exc = InputTooLongError(len(ids) + budget, self.engine.n_ctx, where)
        if not split:
            raise exc
        n = self.engine.n_ctx
        try:
            windows = plan_windows(self.tokenizer, prompt, response, n - self._budget(False), n - self._budget(True))
        except ContextTooSmall:
            if not ids:  # not encoded whole above: the exact count for the message
                ids = self.tokenizer.encode_exchange(prompt, response)
                exc = InputTooLongError(len(ids) + self._budget(bool(response)), n, where)
            raise exc from None
        return PlannedItem(tuple((w.ids, w.prompt_only) for w in windows), tuple(windows))

    def classify_planned(
        self,
        plans: Sequence[PlannedItem],
        on_result: Callable[[int, dict[str, Any]], None] | None = None,
        *,
        cancel: threading.Event | None = None,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """`classify` of items already planned by this classifier's `plan`/`plan_item` (batch
        jobs plan a window of rows, order them by their ids, then run them: tokenized once).
        An item judged in windows carries `windows` (their count) in its result."""
        with self._call():
            return self._run(plans, on_result, Interrupt.make(cancel, timeout))

    def _run(
        self,
        plans: Sequence[PlannedItem],
        on_result: Callable[[int, dict[str, Any]], None] | None,
        interrupt: Interrupt | None,
    ) -> list[dict[str, Any]]:
        results = []
        for i, plan in enumerate(plans):
            n, gen = self.config.max_new_tokens, self.config.mode == "generate"
            fed_inputs = ((fed(self.engine, ids, interrupt), prompt_only) for ids, prompt_only in plan.inputs)  # lazy
            parts = [
                generate(self.engine, self.tokenizer, ids, n, interrupt, prompt_only)
                if gen
                else self.score_ids(ids, prompt_only, interrupt=interrupt)[0]
                for ids, prompt_only in fed_inputs
            ]
            result = parts[0] if plan.windows is None else merge_results(plan.windows, parts)
            apply_thresholds(result, self.config.thresholds)
            results.append(result)
            if on_result is not None:
                on_result(i, result)
        return results

    def plan_tokens(self, plans: Sequence[PlannedItem]) -> int:  # at most: inputs and answers (server/budget.py)
        return sum(len(ids) + self._budget(not prompt_only) for plan in plans for ids, prompt_only in plan.inputs)

    def _budget(self, with_response: bool) -> int:
        """Context room the answer needs after the input."""
        if self.config.mode != "score":
            return self.config.max_new_tokens
        return self._score_budget if with_response else self._score_budget_prompt

    async def aclassify(
        self,
        items: Sequence[Mapping[str, Any]],
        on_result: Callable[[int, dict[str, Any]], None] | None = None,
        *,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """`classify` for asyncio, run off the event loop (`on_result` is called on the loop).
        Cancelling the awaiting task stops the engine, then raises `asyncio.CancelledError`;
        `timeout` raises `ClassificationTimeout`. Concurrent awaits share the engine
        (wildguard_lite/aio.py)."""
        from .aio import aclassify

        return await aclassify(self, items, on_result, timeout=timeout)

    def astream(
        self, prompt: str, rule: "StreamRule | None" = None, interval: int | None = None
    ) -> "AsyncResponseStream":
        """`stream` for asyncio: `await s.afeed(text)`, `await s.aclose()` (wildguard_lite/aio.py)."""
        from .aio import AsyncResponseStream

        return AsyncResponseStream(self.stream(prompt, rule=rule, interval=interval))

    def classify_one(self, prompt: str, response: str | None = None) -> dict[str, Any]:
        """Classify one exchange; see `classify`."""
        item = {"prompt": prompt} if response is None else {"prompt": prompt, "response": response}
        return self.classify([item])[0]

    def encode(self, item: Mapping[str, Any], index: int | None = None) -> tuple[list[int], bool]:
        """Validate an item and return (ids, prompt_only), checking it fits one context
        (`plan_item` without windows)."""
        ids, prompt_only = self.plan_item(item, index, split=False).inputs[0]
        return list(ids), prompt_only

    def stream(self, prompt: str, rule: "StreamRule | None" = None, interval: int | None = None) -> "ResponseStream":
        """Moderate a response while it streams: feed it text as it arrives.

        Args:
            prompt (`str`): the user's request the response answers.
            rule (`StreamRule`, *optional*): when to flag; default: the response is labelled
                harmful (with this classifier's thresholds) on one check.
            interval (`int`, *optional*): new response tokens that trigger a check; default
                `DEFAULT_INTERVAL_TOKENS`.

        Returns:
            `ResponseStream`: `feed(text)` -> verdict or None, `close()` -> final verdict.
        """
        from .streaming import ResponseStream

        self._check_open()
        return ResponseStream(self, prompt, rule=rule, interval=interval)

    def score_exchange(
        self,
        prompt: str,
        response: str,
        guess: Sequence[Sequence[int]] | None = None,
        interrupt: Interrupt | None = None,
    ) -> tuple[dict[str, Any], list[tuple[int, ...]], int]:
        """One check of a stream: plan (one window: a stream that outgrows the context is
        refused, nothing is cut) and score (thresholds applied), counted as a call in flight.
        Returns (result, answers for the next `guess`, exchange length in ids)."""
        with self._call():
            ids, prompt_only = self.plan_item({"prompt": prompt, "response": response}, split=False).inputs[0]
            result, answers = self.score_ids(ids, prompt_only, guess=guess, interrupt=interrupt)
            apply_thresholds(result, self.config.thresholds)
            return result, answers, len(ids)

    def score_ids(
        self,
        ids: Sequence[int],
        prompt_only: bool,
        guess: Sequence[Sequence[int]] | None = None,
        interrupt: Interrupt | None = None,
    ) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
        """Score mode in as few engine calls as the answers allow (thresholds not applied).

        One `logits_at` call evaluates the exchange, each cue and, after every cue but the
        last, the guessed answer, and reads the logits at the cue positions. Where the model's
        answer differs from the guess, the positions after it were conditioned on the wrong
        answer: the rest is evaluated again from there with the true answer (one more call).
        The token sequences are those of `_score`, so the labels and scores are its own.

        Args:
            ids: the encoded exchange (`encode`).
            prompt_only: answer only the first cue (the response labels are n/a).
            guess: answer ids per label (e.g. the previous check's); default " no" for each.
            interrupt: stops the call early (cancel event, deadline).

        Returns:
            (result, answers): the verdict and the answer ids the model chose per label, to
            pass as the next `guess`.

        A response label the model answers " n/a" although a response is present is decided
        from P(yes) renormalised over yes/no (listed in `na_resolved`): an exchange with a
        response never passes without a yes/no reading. The positions after it stay
        conditioned on " n/a", the model's own greedy answer.
        """
        tok = self.tokenizer
        keys = LABEL_KEYS[: 1 if prompt_only else 3]
        guesses = [tuple(g) for g in (guess or ())][: len(keys)]
        guesses += [(tok.no_id,)] * (len(keys) - len(guesses))
        result: dict[str, Any] = {key: None for key in LABEL_KEYS}
        scores: dict[str, float | None] = {key: None for key in LABEL_KEYS}
        answers: list[tuple[int, ...]] = []
        resolved: list[str] = []
        seq, done, error = list(ids), 0, False
        # An engine without its own logits_at would evaluate each position anyway: ask it for
        # one cue at a time (the sequential path), so no position is evaluated on a wrong guess.
        # one_pass=False asks for the same path (benchmarks compare the two).
        batched = self.config.one_pass and self.engine.multi_position
        while done < len(keys) and not error:
            batch, positions = list(seq), []
            last = len(keys) if batched else done + 1
            for k in range(done, last):
                batch += self._cues[k]
                positions.append(len(batch) - 1)
                if k < last - 1:
                    batch += guesses[k]
            for k, logits in zip(
                range(done, done + len(positions)), self.engine.logits_at(batch, positions, interrupt)
            ):
                key = keys[k]
                answer, label, score = self.read_answer(key, logits)
                if label is None and answer is not None and not prompt_only:
                    label, score = self._resolve_na(key, logits)
                    resolved.append(key)
                seq += self._cues[k]
                done = k + 1
                if answer is None:
                    error = True
                    break
                result[key], scores[key] = label, score
                seq += answer
                answers.append(answer)
                if answer != guesses[k]:
                    break  # later positions were conditioned on the guess: evaluate them again
        result["is_parsing_error"] = error
        result["scores"] = scores
        if resolved:
            result["na_resolved"] = resolved
        return result, answers

    def _resolve_na(self, key: str, logits: np.ndarray) -> tuple[str, float]:
        return resolve_na(self.tokenizer, key, logits)

    def read_answer(self, key: str, logits: np.ndarray) -> tuple[tuple[int, ...] | None, str | None, float | None]:
        """What greedy generation writes after a cue: (answer ids, label, P(yes)); answer ids
        None where it would write neither yes/no nor (for response labels) n/a."""
        tok = self.tokenizer
        top = int(np.argmax(logits))
        if top in self._is_answer:
            label = LABEL_VALUES[key]["yes" if top == tok.yes_id else "no"]
            return (top,), label, p_yes(logits, tok.yes_id, tok.no_id)
        if key != "prompt_harmfulness" and top == tok.na_ids[0]:
            return tuple(tok.na_ids), None, None
        return None, None, None

    def close(self) -> None:
        """Free the engine once the calls in flight (other threads, streams mid-check) have
        finished; later calls raise ClassifierClosedError. Safe to call twice."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            while self._active:
                self._state.wait()
        self.engine.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClassifierClosedError(
                "this Classifier was closed (close() or the end of its 'with' block); "
                "load the model again with wildguard_lite.load()"
            )

    @contextlib.contextmanager
    def _call(self):
        """Count a call in flight (close() waits for it); refused once closing."""
        with self._state:
            self._check_open()
            self._active += 1
        try:
            yield
        finally:
            with self._state:
                self._active -= 1
                self._state.notify_all()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _extension_slack(self) -> int:
        """Tokens a stream's next check drops from its previous one: the template after the
        answer, the first cue, and two answer tokens that may re-tokenize."""
        a = self.tokenizer.encode_exchange("q", "alpha")
        b = self.tokenizer.encode_exchange("q", "zebra crossing 42")
        tail = 0
        while tail < min(len(a), len(b)) and a[-1 - tail] == b[-1 - tail]:
            tail += 1
        return tail + len(self._cues[0]) + 2
