"""Slot placement rules (backends/slots.py): pure decisions, no llama.cpp, fast tier."""

from __future__ import annotations

import numpy as np
import pytest

from wildguard_lite.backends.slots import Placement, SlotRequest, SlotSequence, common_prefix, evictions, place

SLACK = 4


def seqs(*held: tuple[list[int], int, int]) -> list[SlotSequence]:
    """Sequences from (tokens, stem, last_used)."""
    return [SlotSequence(i, list(tokens), stem, used) for i, (tokens, stem, used) in enumerate(held)]


def req(ids, first=None) -> SlotRequest:
    return SlotRequest(list(ids), len(ids) - 1 if first is None else first)


def test_common_prefix():
    assert common_prefix([1, 2, 3], np.array([1, 2, 4])) == 2
    assert common_prefix([1, 2], np.array([1, 2, 3])) == 2
    assert common_prefix([], np.array([1])) == 0
    assert common_prefix([5], np.array([1])) == 0


def test_a_stream_s_next_check_continues_its_sequence():
    # the sequence read logits from position 8 on (its stem); the next check shares 10 tokens
    s = seqs((list(range(12)), 8, 1), ([], 0, 0))
    (p,) = place(s, [req(list(range(10)) + [50, 51, 52])], SLACK)
    assert p == Placement(s[0], 10, None, True)


def test_within_the_slack_still_extends():
    # the check re-tokenized the tail: the common prefix ends 3 tokens before the stem (slack 4)
    s = seqs((list(range(12)), 8, 1), ([], 0, 0))
    (p,) = place(s, [req(list(range(5)) + [60, 61, 62, 63])], SLACK)
    assert p.sequence is s[0] and p.extends and p.keep == 5


def test_beyond_the_slack_a_new_sequence_gets_the_shared_prefix_copied():
    # common prefix 3 < stem 8 - slack 4: another exchange sharing the instruction prefix
    s = seqs((list(range(12)), 8, 1), ([], 0, 0))
    (p,) = place(s, [req([0, 1, 2, 70, 71, 72])], SLACK)
    assert p == Placement(s[1], 3, copy_from=s[0], extends=False)


def test_an_empty_sequence_goes_before_the_least_recently_used():
    s = seqs(([9] * 10, 8, 1), ([8] * 10, 8, 2), ([], 0, 5))
    (p,) = place(s, [req([1, 2, 3])], SLACK)
    assert p.sequence is s[2] and p.copy_from is None and p.keep == 0


def test_without_an_empty_one_the_least_recently_used_is_taken():
    s = seqs(([9] * 10, 8, 7), ([8] * 10, 8, 2), ([7] * 10, 8, 5))
    (p,) = place(s, [req([1, 2, 3])], SLACK)
    assert p.sequence is s[1] and p.keep == 0 and p.copy_from is None


def test_the_target_s_own_prefix_needs_no_copy():
    # the least recently used sequence shares the most: kept in place, not copied onto itself
    s = seqs(([1, 2, 3, 4] + [9] * 10, 12, 1), ([1] + [8] * 10, 9, 3))
    (p,) = place(s, [req([1, 2, 3, 4, 5])], SLACK)
    assert p == Placement(s[0], 4, None, False)


def test_keep_never_reaches_a_position_to_read():
    # all of it is cached, but the last position's logits must be computed in this round
    s = seqs(([1, 2, 3, 4, 5], 4, 1))
    (p,) = place(s, [req([1, 2, 3, 4, 5])], SLACK)
    assert p.keep == 4
    (p,) = place(s, [req([1, 2, 3, 4, 5, 6, 7], first=2)], SLACK)
    assert p.keep == 2


def test_requests_of_one_round_never_share_a_sequence():
    s = seqs((list(range(10)), 6, 1), ([], 0, 0), ([], 0, 0))
    same = list(range(10)) + [99]
    placements = place(s, [req(same), req(same), req(same)], SLACK)
    assert len({id(p.sequence) for p in placements}) == 3
    assert placements[0].sequence is s[0] and placements[0].extends
    # the later ones cannot extend the busy sequence nor copy from it
    assert all(p.copy_from is not s[0] and not p.extends for p in placements[1:])


def test_more_requests_than_sequences_is_a_bug():
    with pytest.raises(ValueError, match="2 requests for 1 sequences"):
        place(seqs(([], 0, 0)), [req([1]), req([2])], SLACK)


def test_evictions_drop_the_least_recently_used_idle_sequences_until_the_round_fits():
    s = seqs(([1] * 40, 0, 3), ([2] * 30, 0, 1), ([3] * 20, 0, 2), ([], 0, 0))
    # 90 held + 30 new in a pool of 100: drop LRU first (s1: 30 -> 60 + 30 fits)
    assert evictions(s, [s[3]], 30, 100) == [s[1]]
    # the round's own sequence is never dropped, even when least recently used
    assert evictions(s, [s[1], s[3]], 30, 100) == [s[2]]
    # more room needed: several, in LRU order
    assert evictions(s, [s[3]], 60, 100) == [s[1], s[2]]
    # it fits already: nothing
    assert evictions(s, [s[3]], 10, 100) == []
