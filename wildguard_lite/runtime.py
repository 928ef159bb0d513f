"""The classifier: WildGuard's contract on top of any Backend."""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from .backends.base import Backend, check_threads
from .contract import LABEL_KEYS, LABEL_VALUES, parse_output, validate_item
from .errors import ClassifierClosedError, InputTooLongError, InvalidInputError, ModelFileError
from .tokenization import WildGuardTokenizer

if TYPE_CHECKING:
    from .streaming import ResponseStream, StreamRule

from .defaults import DEFAULT_N_CTX, MAX_N_CTX, MIN_N_CTX, MODES  # noqa: F401 (re-exported)


def _check_int(name: str, value: Any, low: int, high: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise InvalidInputError(f"{name} must be between {low} and {high}, got {value}; {hint}")


@dataclass(frozen=True)
class RuntimeConfig:
    """How to run: `mode` is "score" (read the three answers' probabilities) or "generate"
    (greedy generation parsed like the official package)."""

    mode: str = "score"
    threads: int | None = None
    n_ctx: int = DEFAULT_N_CTX
    max_new_tokens: int = 32
    flash_attn: bool = True
    use_mmap: bool = True
    repack: bool = False
    # Per-label thresholds on P(yes) ({label: t}: "yes" when P(yes) >= t); None keeps
    # WildGuard's own argmax. Only the reported label moves: the model is always conditioned
    # on its own greedy answers.
    thresholds: Mapping[str, float] | None = field(default=None, hash=False)
    # Score mode: the three cues and guessed answers in one engine call (see score_ids).
    one_pass: bool = True

    def __post_init__(self):
        object.__setattr__(self, "thresholds", validate_thresholds(self.thresholds))
        if self.mode not in MODES:
            raise InvalidInputError(f"unknown mode '{self.mode}'; choose one of {', '.join(MODES)}")
        _check_int("n_ctx", self.n_ctx, MIN_N_CTX, MAX_N_CTX,
                   f"the default {DEFAULT_N_CTX} fits WildGuard's inputs; at most the model's trained context")
        check_threads(self.threads)
        _check_int("max_new_tokens", self.max_new_tokens, 1, self.n_ctx, "the answer needs about 17")


def validate_thresholds(thresholds: Mapping[str, Any] | None) -> dict[str, float] | None:
    """Check `{label: threshold}` (labels from LABEL_KEYS, numbers in [0, 1]); None or {} is
    WildGuard's argmax."""
    if not thresholds:
        return None
    if not isinstance(thresholds, Mapping):
        raise InvalidInputError(f"thresholds must be a mapping of label to P(yes) threshold, got {type(thresholds).__name__}")
    checked = {}
    for label, value in thresholds.items():
        if label not in LABEL_KEYS:
            raise InvalidInputError(f"unknown label '{label}' in thresholds; choose from {', '.join(LABEL_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise InvalidInputError(
                f"threshold for {label} must be a number from 0 to 1 (P(yes) at or above it reads 'yes'), got {value!r}"
            )
        checked[label] = float(value)
    return checked


def parse_threshold_specs(specs: Sequence[str] | None) -> dict[str, float] | None:
    """`["LABEL=P", ...]` (the CLI's --threshold) -> validated `{label: P}`; None when empty."""
    parsed: dict[str, Any] = {}
    for spec in specs or ():
        label, sep, value = spec.partition("=")
        label = label.strip()
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or number is None:
            raise InvalidInputError(f"--threshold '{spec}': expected LABEL=P, e.g. response_harmfulness=0.3")
        if label in parsed:
            raise InvalidInputError(f"--threshold: {label} is given twice")
        parsed[label] = number
    return validate_thresholds(parsed)


def apply_thresholds(result: dict[str, Any], thresholds: Mapping[str, float] | None) -> dict[str, Any]:
    """Relabel, in place, each thresholded label the model answered yes/no (it has a score);
    n/a and unreadable answers are left as they are."""
    for label, t in (thresholds or {}).items():
        score = result["scores"].get(label)
        if score is not None and result.get(label) is not None:
            result[label] = LABEL_VALUES[label]["yes" if score >= t else "no"]
    return result


def p_yes(logits: np.ndarray, yes_id: int, no_id: int) -> float:
    """P(yes) renormalised over the two answers: sigmoid(l_yes - l_no)."""
    d = float(logits[yes_id]) - float(logits[no_id])
    return 1.0 / (1.0 + math.exp(-d)) if d > -700 else 0.0


class Classifier:
    """Classifies chat exchanges with WildGuard's exact template and labels."""

    def __init__(self, backend: Backend, tokenizer: WildGuardTokenizer, config: RuntimeConfig | None = None):
        self.backend = backend
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
        # One engine context: calls from several threads must take turns (llama.cpp crashed
        # with SIGSEGV, or hung, when two threads evaluated in one context).
        self._lock = threading.RLock()
        self._closed = False

    # -- public API --------------------------------------------------------------------------
    def classify(
        self,
        items: Sequence[Mapping[str, Any]],
        on_result: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Classify exchanges.

        Args:
            items (`list[dict]`): `{"prompt": str, "response": str}` (response optional); never
                mutated.
            on_result (`callable`, *optional*): called with `(index, result)` as each finishes.

        Returns:
            `list[dict]`: per item `prompt_harmfulness`, `response_refusal`,
            `response_harmfulness` (label or `None`), `is_parsing_error` and `scores` (P(yes)
            per answered label, renormalised over yes/no).

        Raises:
            `InvalidInputError`: an item is malformed, or too long for the context (nothing is
            truncated); raised before any item is run.
        """
        with self._lock:
            self._check_open()
            encoded = [self.encode(item, index=i) for i, item in enumerate(items)]
            results = []
            for i, (ids, prompt_only) in enumerate(encoded):
                if self.config.mode == "generate":
                    result = self._generate(ids)
                elif self.config.one_pass:
                    result = self.score_ids(ids, prompt_only)[0]
                else:
                    result = self._score(ids, prompt_only)
                apply_thresholds(result, self.config.thresholds)
                results.append(result)
                if on_result is not None:
                    on_result(i, result)
            return results

    def classify_one(self, prompt: str, response: str | None = None) -> dict[str, Any]:
        """Classify one exchange; see `classify`."""
        item = {"prompt": prompt} if response is None else {"prompt": prompt, "response": response}
        return self.classify([item])[0]

    def encode(self, item: Mapping[str, Any], index: int | None = None) -> tuple[list[int], bool]:
        """Validate an item and return (ids, prompt_only), checking it fits the context."""
        self._check_open()
        prompt, response = validate_item(item, index)
        ids = self.tokenizer.encode_exchange(prompt, response)
        if self.config.mode == "score":
            budget = self._score_budget_prompt if not response else self._score_budget
        else:
            budget = self.config.max_new_tokens
        if len(ids) + budget > self.backend.n_ctx:
            where = "" if index is None else f"item {index}"
            raise InputTooLongError(len(ids) + budget, self.backend.n_ctx, where)
        return ids, not response

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

        return ResponseStream(self, prompt, rule=rule, interval=interval)

    def score_ids(
        self, ids: list[int], prompt_only: bool, guess: Sequence[Sequence[int]] | None = None
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

        Returns:
            (result, answers): the verdict and the answer ids the model chose per label, to
            pass as the next `guess`.
        """
        tok = self.tokenizer
        keys = LABEL_KEYS[: 1 if prompt_only else 3]
        guesses = [tuple(g) for g in (guess or ())][: len(keys)]
        guesses += [(tok.no_id,)] * (len(keys) - len(guesses))
        result: dict[str, Any] = {key: None for key in LABEL_KEYS}
        scores: dict[str, float | None] = {key: None for key in LABEL_KEYS}
        answers: list[tuple[int, ...]] = []
        seq, done, error = list(ids), 0, False
        # An engine without its own logits_at would evaluate each position anyway: ask it for
        # one cue at a time (the sequential path), so no position is evaluated on a wrong guess.
        batched = type(self.backend).logits_at is not Backend.logits_at
        while done < len(keys) and not error:
            batch, positions = list(seq), []
            last = len(keys) if batched else done + 1
            for k in range(done, last):
                batch += self._cues[k]
                positions.append(len(batch) - 1)
                if k < last - 1:
                    batch += guesses[k]
            for k, logits in zip(range(done, done + len(positions)), self.backend.logits_at(batch, positions)):
                key = keys[k]
                answer, label, score = self.read_answer(key, logits)
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
        return result, answers

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
        """Free the engine; later calls raise ClassifierClosedError. Safe to call twice."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self.backend.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClassifierClosedError("this Classifier was closed (close() or the end of its 'with' block); "
                                        "load the model again with wildguard_lite.load()")

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- modes -------------------------------------------------------------------------------
    def _score(self, ids: list[int], prompt_only: bool) -> dict[str, Any]:
        tok = self.tokenizer
        result: dict[str, Any] = {key: None for key in LABEL_KEYS}
        scores: dict[str, float | None] = {key: None for key in LABEL_KEYS}
        error = False
        seq = list(ids)
        # A prompt-only exchange is answered n/a for both response labels, as officially.
        for key, cue in zip(LABEL_KEYS[: 1 if prompt_only else 3], self._cues):
            seq += cue
            logits = self.backend.next_logits(seq)
            top = int(np.argmax(logits))
            if top not in self._is_answer:
                # Greedy generation would not write yes/no here: follow it. " n/a" is a valid
                # answer for the response labels; anything else is what the official parser
                # reports as a parsing error (and the labels after it are unknown).
                if key != "prompt_harmfulness" and top == tok.na_ids[0]:
                    seq += tok.na_ids
                    continue
                error = True
                break
            scores[key] = p_yes(logits, tok.yes_id, tok.no_id)
            result[key] = LABEL_VALUES[key]["yes" if top == tok.yes_id else "no"]
            seq.append(top)
        result["is_parsing_error"] = error
        result["scores"] = scores
        return result

    def _generate(self, ids: list[int]) -> dict[str, Any]:
        tok = self.tokenizer
        seq = list(ids)
        generated: list[int] = []
        answer_logits: dict[int, np.ndarray] = {}  # step -> logits when a yes/no was chosen
        for step in range(self.config.max_new_tokens):
            if len(seq) >= self.backend.n_ctx:
                break
            logits = self.backend.next_logits(seq)
            token = int(np.argmax(logits))
            if token == tok.eos_id:
                break
            if token in self._is_answer:
                answer_logits[step] = logits
            generated.append(token)
            seq.append(token)
        # Only the generated ids are decoded and parsed: the input can never be the verdict.
        result = parse_output(tok.decode(generated))
        result["scores"] = self._generated_scores(generated, answer_logits)
        return result

    def _generated_scores(self, generated: list[int], answer_logits: dict[int, np.ndarray]) -> dict[str, float | None]:
        """P(yes) at the positions right after each cue, where the model answered yes/no."""
        tok = self.tokenizer
        scores: dict[str, float | None] = {key: None for key in LABEL_KEYS}
        pos = 0
        for key, cue in zip(LABEL_KEYS, self._cues):
            end = _find(generated, cue, pos)
            if end is None:
                break
            if end in answer_logits:
                scores[key] = p_yes(answer_logits[end], tok.yes_id, tok.no_id)
            pos = end
        return scores


def _find(seq: list[int], sub: list[int], start: int) -> int | None:
    """Index just after the first occurrence of `sub` in `seq[start:]`."""
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i : i + len(sub)] == sub:
            return i + len(sub)
    return None


def load(
    path: str | os.PathLike,
    mode: str = "score",
    threads: int | None = None,
    n_ctx: int = DEFAULT_N_CTX,
    prefix_cache: Any = None,
    quant: str | None = None,
    revision: str | None = None,
    legacy: bool | None = None,
    **options: Any,
) -> Classifier:
    """Load a converted WildGuard model.

    Args:
        path (`str` or `os.PathLike`): a `.gguf` file made by `wildguard-lite convert`, or an
            ONNX variant it made (`model.onnx`, or the folder holding it with the tokenizer files).
        mode (`str`): "score" (default) or "generate".
        threads (`int`, *optional*): CPU threads; default: all cores, at most 8.
        n_ctx (`int`): context length in tokens (input plus answer); longer input is refused.
        prefix_cache (`PrefixStateCache`, *optional*): a KV-state cache shared by several
            classifiers (llama.cpp only: the ONNX backend keeps its last sequence only).
        quant (`str`, *optional*): with "hf://owner/name[@revision]": the artifact to pull
            (default "q4_k_m"); it is downloaded through the Hugging Face cache and its sha256
            checked against the repo's manifest before use (wildguard_lite/hub.py).
        revision (`str`, *optional*): with "hf://": branch, tag or commit.
        legacy (`bool`, *optional*): only for a GGUF made by llama.cpp's converter (no embedded
            tokenizer): the slow tokenizer's `legacy` flag (default: gguf_vocab.LEGACY_DEFAULT).
        **options: more `RuntimeConfig` fields (`max_new_tokens`, `flash_attn`, `use_mmap`,
            `repack`).

    Returns:
        `Classifier`
    """
    config = RuntimeConfig(mode=mode, threads=threads, n_ctx=n_ctx, **options)
    if str(path).startswith("hf://"):
        from .hub import DEFAULT_PULL_QUANT, pull

        path = pull(str(path), quant or DEFAULT_PULL_QUANT, revision)
    elif quant is not None or revision is not None:
        raise InvalidInputError("quant= and revision= apply to hf://owner/name only; pass the local file itself")
    path = Path(path)
    if path.suffix == ".onnx" or (path.is_dir() and (path / "model.onnx").is_file()):
        return _load_onnx(path, config)
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder; pass the .gguf file inside it (see its manifest.json)")
    from .gguf_meta import read_gguf_info

    info = read_gguf_info(path)
    spec = info.tokenizer
    if spec is None:
        # A GGUF from llama.cpp's converter: rebuild the reference from its tokenizer.ggml.* vocabulary.
        from .gguf_vocab import spec_from_gguf_file

        spec = spec_from_gguf_file(path, legacy)
    elif legacy is not None and legacy != spec.legacy:
        raise InvalidInputError(f"{path}: carries its checkpoint's tokenizer (legacy={spec.legacy}); "
                                "legacy= applies only to GGUFs without it")
    check_n_ctx(config.n_ctx, info.context_length, f"{path}: llama.context_length")
    tokenizer = _tokenizer(spec, path)
    from .backends.llama import LlamaCppBackend

    backend = LlamaCppBackend(path, n_ctx=config.n_ctx, threads=config.threads,
                              flash_attn=config.flash_attn, use_mmap=config.use_mmap, repack=config.repack,
                              prefix_cache=prefix_cache)
    if backend.n_vocab != tokenizer.vocab_size:
        backend.close()
        raise ModelFileError(f"{path}: model vocabulary ({backend.n_vocab}) does not match its tokenizer ({tokenizer.vocab_size})")
    return Classifier(backend, tokenizer, config)



def _tokenizer(spec, where: Path) -> WildGuardTokenizer:
    try:
        return WildGuardTokenizer(spec)
    except ModelFileError as exc:
        raise ModelFileError(f"{where}: {exc}") from None


def check_n_ctx(n_ctx: int, trained: int | None, where: str) -> None:
    """n_ctx beyond the context the model was trained for gives garbage silently: refuse it."""
    if trained is not None and n_ctx > trained:
        raise InvalidInputError(f"n_ctx {n_ctx} exceeds the model's trained context of {trained} ({where}); "
                                f"use n_ctx <= {trained}")


def trained_context(folder: Path) -> int | None:
    """max_position_embeddings from an ONNX variant's config.json, if it says."""
    import json

    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"{config}: not a valid config.json ({exc})") from None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelFileError(f"{config}: max_position_embeddings must be a positive integer, got {value!r}")
    return value


def _load_onnx(path: Path, config: RuntimeConfig) -> Classifier:
    """An ONNX variant: the model file (or its folder) with tokenizer.model + tokenizer_config.json
    beside it; onnxruntime, sentencepiece and numpy only."""
    from .backends.onnx import OnnxBackend, resolve_model_path
    from .tokenization import TokenizerSpec

    model = resolve_model_path(path)
    check_n_ctx(config.n_ctx, trained_context(model.parent), f"{model.parent / 'config.json'}: max_position_embeddings")
    tokenizer = _tokenizer(TokenizerSpec.from_hf_folder(model.parent), model.parent)
    backend = OnnxBackend(model, n_ctx=config.n_ctx, threads=config.threads)
    if backend.n_vocab != tokenizer.vocab_size:
        backend.close()
        raise ModelFileError(f"{model}: model vocabulary ({backend.n_vocab}) does not match its tokenizer ({tokenizer.vocab_size})")
    return Classifier(backend, tokenizer, config)
