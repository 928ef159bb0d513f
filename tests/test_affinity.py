"""The affinity key and the bounded-load hash ring of `serve --ray` (pure Python, no Ray)."""

from __future__ import annotations

import collections
import random

import pytest

from wildguard_lite.server.affinity import Ring, capacity, point, route_key

ITEMS = [{"prompt": "How do I bake bread?", "response": "Mix flour"}]


def test_key_order_header_then_litellm_ids_then_prompt():
    body = {"litellm_call_id": "call-1", "litellm_trace_id": "trace-1"}
    assert route_key({"x-session-id": "s-9"}, body, ITEMS) == "session:s-9"
    assert route_key({}, body, ITEMS) == "litellm:call-1"
    assert route_key({}, {"litellm_trace_id": "trace-1"}, ITEMS) == "litellm:trace-1"
    assert route_key({"x-session-id": "  "}, {"litellm_call_id": ""}, ITEMS).startswith("prompt:")
    assert route_key({}, None, []) is None
    assert route_key({}, {"litellm_call_id": 7}, [{"response": "x"}]) is None


def test_prompt_key_sticks_while_the_answer_grows_and_differs_between_prompts():
    grown = [{"prompt": ITEMS[0]["prompt"], "response": "Mix flour, water and yeast; knead"}]
    assert route_key({}, {}, ITEMS) == route_key({}, {}, grown)
    assert route_key({}, {}, ITEMS) != route_key({}, {}, [{"prompt": "Another question"}])
    # A text that grows past the characters the key reads keeps its key.
    long_text = "a" * 5000
    assert route_key({}, {}, [{"prompt": long_text}]) == route_key({}, {}, [{"prompt": long_text + "more"}])


def test_long_ids_are_clipped():
    key = route_key({"x-session-id": "x" * 10_000}, None, [])
    assert key is not None and len(key) == len("session:") + 256


def test_points_are_stable_across_processes():
    # blake2b, not Python's salted hash(): every front builds the same ring.
    assert point("replica-a#0") == int.from_bytes(
        __import__("hashlib").blake2b(b"replica-a#0", digest_size=8).digest(), "big"
    )


def test_walk_visits_every_replica_once_owner_first():
    ring = Ring(["a", "b", "c"])
    for k in range(50):
        order = ring.walk(f"key-{k}")
        assert sorted(order) == ["a", "b", "c"]
    assert Ring().walk("k") == []


def test_keys_spread_over_replicas():
    ring = Ring(["a", "b", "c", "d"])
    owners = collections.Counter(ring.walk(f"conv-{k}")[0] for k in range(4000))
    assert set(owners) == {"a", "b", "c", "d"}
    assert max(owners.values()) < 1.35 * min(owners.values())


def test_adding_a_replica_moves_only_its_share():
    before = Ring(["a", "b", "c"])
    after = Ring(["a", "b", "c", "d"])
    keys = [f"conv-{k}" for k in range(3000)]
    moved = [k for k in keys if before.walk(k)[0] != after.walk(k)[0]]
    assert all(after.walk(k)[0] == "d" for k in moved)  # keys move only to the newcomer
    assert 0.15 < len(moved) / len(keys) < 0.35


def test_removing_a_replica_keeps_the_others_keys():
    full, less = Ring(["a", "b", "c"]), Ring(["a", "c"])
    for k in range(500):
        owner = full.walk(f"k{k}")[0]
        if owner != "b":
            assert less.walk(f"k{k}")[0] == owner
        else:  # b's keys go to the next replica on b's walk
            assert less.walk(f"k{k}")[0] == full.walk(f"k{k}")[1]


def test_update_reports_changes():
    ring = Ring(["a"])
    assert ring.update(["a"]) is False
    assert ring.update(["a", "b"]) is True
    assert ring.nodes == {"a", "b"}


def test_bounded_load_spills_a_hot_owner_to_the_next_on_the_ring():
    ring = Ring(["a", "b", "c"])
    key = "hot-conversation"
    walk = ring.walk(key)
    owner = walk[0]
    assert ring.ranked(key, {}) == walk
    # Owner at the bound: capacity(total in flight 4, 3 replicas, 1.25) = ceil(1.25 * 5 / 3) = 3.
    loads = {owner: 3, walk[1]: 1, walk[2]: 0}
    assert capacity(4, 3) == 3
    assert ring.ranked(key, loads) == [walk[1], walk[2], owner]
    # Below the bound the owner keeps its conversation.
    assert ring.ranked(key, {owner: 2, walk[1]: 2, walk[2]: 0})[0] == owner


def test_skewed_traffic_stays_within_the_bound():
    """Every request for one key, held in flight: no replica exceeds the bound at admission."""
    ring = Ring(["a", "b", "c", "d"])
    loads: dict[str, int] = collections.defaultdict(int)
    rng = random.Random(0)
    for n in range(200):
        key = "hot" if rng.random() < 0.9 else f"cold-{n}"
        chosen = ring.ranked(key, loads, 1.25)[0]
        assert loads[chosen] < capacity(sum(loads.values()), 4, 1.25)
        loads[chosen] += 1
    assert max(loads.values()) <= capacity(199, 4, 1.25)


def test_bad_parameters():
    with pytest.raises(ValueError, match="virtual_nodes"):
        Ring(["a"], virtual_nodes=0)
    with pytest.raises(ValueError, match="load_factor"):
        capacity(1, 1, 0.5)
