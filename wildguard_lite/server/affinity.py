"""Conversation affinity for a fleet (`serve --ray`): which key a request has, and which
replica a key goes to. Pure Python, no Ray: `fleet_router.py` applies it inside Ray Serve.

The key, in order (docs/cluster.md):
1. the `X-Session-Id` header (Ray's, vLLM's router's and LiteLLM's router's convention);
2. LiteLLM's Generic Guardrail API ids from the JSON body, `litellm_call_id`, then
   `litellm_trace_id` (LiteLLM sends them in the body, not as headers);
3. derived from the exchange: a hash of the start of the first item's prompt, so a plain
   `/v1/moderations` client that re-checks a growing answer (or a growing text) sticks too.

The ring: consistent hashing with virtual nodes and bounded load (Mirrokni, Thorup and
Zadeh, "Consistent Hashing with Bounded Loads"): a key goes to the first replica clockwise
from its hash whose requests in flight are below `ceil(load_factor * (in_flight + 1) / replicas)`,
so a hot replica spills to the next one on the ring instead of queueing without limit. A miss
costs the conversation one re-evaluation of its exchange, never a wrong verdict.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from typing import Any, Hashable, Iterable, Mapping, Sequence

SESSION_HEADER = "x-session-id"
BODY_KEYS = ("litellm_call_id", "litellm_trace_id")
KEY_MAX_CHARS = 256  # longer ids are hashed as their first 256 characters
PROMPT_KEY_CHARS = 1024  # the derived key reads the prompt's first characters (its KV prefix)
DEFAULT_VIRTUAL_NODES = 100
DEFAULT_LOAD_FACTOR = 1.25


def route_key(headers: Mapping[str, str], body: Any, items: Sequence[Mapping[str, Any]]) -> str | None:
    """The affinity key of a request, tagged by its source ("session:", "litellm:", "prompt:");
    None when it has nothing to key on (no header, no ids, no items)."""
    session = headers.get(SESSION_HEADER, "").strip()
    if session:
        return "session:" + session[:KEY_MAX_CHARS]
    if isinstance(body, dict):
        for name in BODY_KEYS:
            value = body.get(name)
            if isinstance(value, str) and value.strip():
                return "litellm:" + value.strip()[:KEY_MAX_CHARS]
    for item in items:
        prompt = item.get("prompt")
        if isinstance(prompt, str):
            digest = hashlib.blake2b(prompt[:PROMPT_KEY_CHARS].encode("utf-8", "surrogatepass"), digest_size=16)
            return "prompt:" + digest.hexdigest()
    return None


def point(text: str) -> int:
    """A key's (or a virtual node's) place on the ring: 64 bits of blake2b, the same in every
    process (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


class Ring:
    """Replicas on a hash ring, `virtual_nodes` points each. Only the nodes change it: the same
    replicas give the same ring in every process."""

    def __init__(self, nodes: Iterable[str] = (), virtual_nodes: int = DEFAULT_VIRTUAL_NODES):
        if virtual_nodes < 1:
            raise ValueError(f"virtual_nodes must be at least 1, got {virtual_nodes}")
        self.virtual_nodes = virtual_nodes
        self.nodes: frozenset[str] = frozenset()
        self._points: list[int] = []
        self._owners: list[str] = []
        self.update(nodes)

    def update(self, nodes: Iterable[str]) -> bool:
        """Rebuild for this set of replicas; False when the set did not change."""
        nodes = frozenset(nodes)
        if nodes == self.nodes and self._points:
            return False
        pairs = sorted((point(f"{node}#{i}"), node) for node in nodes for i in range(self.virtual_nodes))
        self._points = [p for p, _ in pairs]
        self._owners = [n for _, n in pairs]
        self.nodes = nodes
        return True

    def walk(self, key: str) -> list[str]:
        """Every replica once, in ring order from the key's place (its owner first)."""
        if not self._points:
            return []
        start = bisect.bisect_right(self._points, point(key)) % len(self._points)
        order: list[str] = []
        seen: set[str] = set()
        for i in range(len(self._points)):
            owner = self._owners[(start + i) % len(self._points)]
            if owner not in seen:
                seen.add(owner)
                order.append(owner)
                if len(order) == len(self.nodes):
                    break
        return order

    def ranked(self, key: str, loads: Mapping[Hashable, int], load_factor: float = DEFAULT_LOAD_FACTOR) -> list[str]:
        """The replicas in the order to try them: the key's walk, with those at or over the
        bound moved behind the others (in walk order), so the first is the owner unless it is
        full, then the next replica on the ring that is not."""
        order = self.walk(key)
        if not order:
            return []
        bound = capacity(sum(loads.get(n, 0) for n in order), len(order), load_factor)
        under = [n for n in order if loads.get(n, 0) < bound]
        return under + [n for n in order if loads.get(n, 0) >= bound]


def capacity(in_flight: int, replicas: int, load_factor: float = DEFAULT_LOAD_FACTOR) -> int:
    """The most requests one replica may hold before a new one spills: `load_factor` times
    the average once the new request is counted (at least 1)."""
    if load_factor < 1:
        raise ValueError(f"load_factor must be at least 1, got {load_factor}")
    return max(1, math.ceil(load_factor * (in_flight + 1) / max(1, replicas)))
