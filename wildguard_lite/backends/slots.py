"""Slot placement for the llama.cpp engine: which KV sequence each request of a round runs on,
what of it stays cached, what is copied in from another sequence, and which idle sequences
are evicted to make room. Pure decisions over `SlotSequence` records (no llama.cpp here):
backends/llama.py applies them with llama_memory_seq_rm / seq_cp.

The rules (tests/test_slots.py):
- A request that extends what a free sequence holds (their common prefix reaches within
  `extension_slack` tokens of the sequence's stem, where its last request started reading
  logits: a stream's next check, a generation step, a gateway's growing answer) continues on
  the one sharing the most, keeping that common prefix.
- Any other request takes an empty free sequence, else the least recently used free one,
  keeping what that one shares with it, or, where another free sequence shares a longer
  prefix, first copying that prefix into it: it neither evaluates the prefix again nor
  destroys another stream's state.
- Every position a request reads is evaluated in this round: at most the first read position
  is kept.
- Two requests of one round never share a sequence.
- When a round needs room in the KV pool, the least recently used sequences outside it are
  evicted until the round's new tokens fit beside what stays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass(eq=False)
class SlotSequence:
    """One KV sequence of the context and what its cache holds."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)  # what the KV cache holds for this sequence
    stem: int = 0  # the first position the last request read logits at
    last_used: int = 0


@dataclass(frozen=True)
class Placement:
    """Where one request runs: on `sequence`, its first `keep` ids taken from the cache (the
    rest evaluated); with `copy_from`, the sequence is cleared and that sequence's first `keep`
    tokens copied in first. `extends`: the request continues the sequence's exchange."""

    sequence: SlotSequence
    keep: int
    copy_from: SlotSequence | None = None
    extends: bool = False


@dataclass(frozen=True)
class SlotRequest:
    """What placement needs of a request: its ids and the first position it reads."""

    ids: Sequence[int]
    first_position: int


def common_prefix(tokens: list[int], query: np.ndarray) -> int:
    n = min(len(tokens), len(query))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(tokens[:n], dtype=np.int64) != query[:n])
    return int(diff[0]) if diff.size else n


def place(sequences: Sequence[SlotSequence], requests: Sequence[SlotRequest], extension_slack: int) -> list[Placement]:
    """One placement per request (at most len(sequences) requests), by the rules above."""
    if len(requests) > len(sequences):
        raise ValueError(f"{len(requests)} requests for {len(sequences)} sequences")
    free = list(sequences)
    placements = []
    for request in requests:
        query = np.asarray(request.ids, dtype=np.int64)
        common = {id(seq): common_prefix(seq.tokens, query) for seq in sequences}
        extending = [s for s in free if s.tokens and common[id(s)] >= s.stem - extension_slack]
        copy_from = None
        if extending:
            target = max(extending, key=lambda s: common[id(s)])
            keep = common[id(target)]
        else:
            target = min(free, key=lambda s: (bool(s.tokens), s.last_used))
            donor = max(free, key=lambda s: common[id(s)])
            keep = common[id(target)]
            if common[id(donor)] > keep:  # another free sequence shares more than the target holds
                copy_from, keep = donor, common[id(donor)]
        free.remove(target)
        placements.append(Placement(target, min(keep, request.first_position), copy_from, bool(extending)))
    return placements


def evictions(
    sequences: Sequence[SlotSequence], in_round: Sequence[SlotSequence], need: int, kv_tokens: int
) -> list[SlotSequence]:
    """The sequences to drop, least recently used first, so that `need` new tokens fit the
    pool of `kv_tokens` cells beside what the others hold; never one of the round's."""
    held = sum(len(s.tokens) for s in sequences)
    out = []
    busy = {id(s) for s in in_round}
    for seq in sorted(sequences, key=lambda s: s.last_used):
        if held + need <= kv_tokens:
            break
        if id(seq) not in busy and seq.tokens:
            held -= len(seq.tokens)
            out.append(seq)
    return out
