"""Generate mode: WildGuard's answer generated greedily and parsed as the official package does,
with P(yes) read where the model answered each label (score mode is `Classifier.score_ids`)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .backends.base import Engine, Interrupt
from .contract import LABEL_KEYS, LABEL_VALUES, parse_output
from .tokenization import WildGuardTokenizer


# A long input reaches an engine running several calls at once this many tokens per round
# (`fed`): a short request waits for about one such piece, not for the whole input.
INTERLEAVE_TOKENS = 256


def fed(engine: Engine, ids: Sequence[int], interrupt: Interrupt | None) -> list[int]:
    """Fair share: an engine running several calls at once (llama.cpp) gets a long input
    INTERLEAVE_TOKENS at a time, one engine round each (it keeps each piece in the call's
    sequence and evaluates only the next), so other callers' requests join the next round
    instead of waiting for the whole input. Returns `ids`, whose tail the caller's own call
    evaluates."""
    ids = list(ids)
    if engine.slots > 1 and len(ids) > 2 * INTERLEAVE_TOKENS:
        for end in range(INTERLEAVE_TOKENS, len(ids) - INTERLEAVE_TOKENS, INTERLEAVE_TOKENS):
            engine.feed_piece(ids[:end], interrupt)
    return ids


def p_yes(logits: np.ndarray, yes_id: int, no_id: int) -> float:
    """P(yes) renormalised over the two answers: sigmoid(l_yes - l_no)."""
    d = float(logits[yes_id]) - float(logits[no_id])
    return 1.0 / (1.0 + math.exp(-d)) if d > -700 else 0.0


def resolve_na(tokenizer: WildGuardTokenizer, key: str, logits: np.ndarray) -> tuple[str, float]:
    """A response label answered " n/a" although a response is present: decided from P(yes)."""
    score = p_yes(logits, tokenizer.yes_id, tokenizer.no_id)
    return LABEL_VALUES[key]["yes" if score >= 0.5 else "no"], score


def generate(
    engine: Engine,
    tokenizer: WildGuardTokenizer,
    ids: list[int],
    max_new_tokens: int,
    interrupt: Interrupt | None = None,
    prompt_only: bool = True,
) -> dict[str, Any]:
    """Greedy generation after `ids`, parsed (only the generated ids: the input can never be
    the verdict), with `scores` as in score mode."""
    tok = tokenizer
    answers = {tok.yes_id, tok.no_id, tok.na_ids[0]}
    seq = list(ids)
    generated: list[int] = []
    answer_logits: dict[int, np.ndarray] = {}  # step -> logits where a yes/no or n/a was chosen
    for step in range(max_new_tokens):
        if len(seq) >= engine.n_ctx:
            break
        logits = engine.next_logits(seq, interrupt)
        token = int(np.argmax(logits))
        if token == tok.eos_id:
            break
        if token in answers:
            answer_logits[step] = logits
        generated.append(token)
        seq.append(token)
    result = parse_output(tok.decode(generated))
    result["scores"] = _generated_scores(tok, result, generated, answer_logits, prompt_only)
    return result


def _generated_scores(
    tok: WildGuardTokenizer,
    result: dict[str, Any],
    generated: list[int],
    answer_logits: dict[int, np.ndarray],
    prompt_only: bool,
) -> dict[str, float | None]:
    """P(yes) at the positions right after each cue, where the model answered yes/no; an
    n/a for a response label with a response present is resolved as in score mode."""
    scores: dict[str, float | None] = {key: None for key in LABEL_KEYS}
    pos = 0
    for key, cue in zip(LABEL_KEYS, tok.cue_ids):
        end = _find(generated, list(cue), pos)
        if end is None:
            break
        logits = answer_logits.get(end)
        if logits is not None and int(np.argmax(logits)) in (tok.yes_id, tok.no_id):
            scores[key] = p_yes(logits, tok.yes_id, tok.no_id)
        elif logits is not None and not prompt_only and key != LABEL_KEYS[0] and result.get(key) is None:
            result[key], scores[key] = resolve_na(tok, key, logits)
            result.setdefault("na_resolved", []).append(key)
        pos = end
    return scores


def _find(seq: list[int], sub: list[int], start: int) -> int | None:
    """Index just after the first occurrence of `sub` in `seq[start:]`."""
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i : i + len(sub)] == sub:
            return i + len(sub)
    return None
