"""The Ray Serve request router of `serve --ray`: consistent hashing with bounded load
(`affinity.Ring`) over the replicas, keyed by the request's `session_id` (the front sets it to
the affinity key with `handle.options(session_id=...)`).

Ray imports this module by path (`RequestRouterConfig(request_router_class=...)`), inside the
process that holds the handle (the front): nothing else imports it, so Ray is imported at the
top. It builds on Ray's experimental `ConsistentHashRouter` (its routing loop keeps a request
routed by the task that took it), replacing the choice: the load of a replica is the number of
requests Ray's router counts in flight there (sent, not yet finished), and a replica at the
bound yields to the next one on the ring. A replica whose actor died leaves the ring at once.
"""

from __future__ import annotations

from typing import Any

from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter

from .affinity import DEFAULT_LOAD_FACTOR, DEFAULT_VIRTUAL_NODES, Ring


class BoundedHashRouter(ConsistentHashRouter):
    """Kwargs (`request_router_kwargs`): `load_factor` (1.25), `virtual_nodes` (100),
    `round_robin` (False; True: no affinity, the replicas in turn, for comparison)."""

    def initialize_state(self, **kwargs: Any) -> None:
        self._round_robin = bool(kwargs.get("round_robin", False))
        self._turn = 0
        self._load_factor = float(kwargs.get("load_factor", DEFAULT_LOAD_FACTOR))
        self._ring = Ring(virtual_nodes=int(kwargs.get("virtual_nodes", DEFAULT_VIRTUAL_NODES)))
        self._ring.update(r.unique_id for r in self._replica_id_set)
        super().initialize_state(num_virtual_nodes=1, num_fallback_replicas=0)

    def update_replicas(self, replicas) -> None:
        super().update_replicas(replicas)
        if hasattr(self, "_ring"):
            self._ring.update(r.unique_id for r in self._replica_id_set)

    def on_replica_actor_died(self, replica_id) -> None:
        super().on_replica_actor_died(replica_id)
        if hasattr(self, "_ring"):
            self._ring.update(r.unique_id for r in self._replica_id_set)

    def loads(self) -> dict[str, int]:
        cache = self._replica_queue_len_cache
        return {rid.unique_id: cache.get(rid) or 0 for rid in self._replica_id_set}

    async def choose_replicas(self, candidate_replicas, pending_request=None):
        if not candidate_replicas:
            return []
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        loads = self.loads()
        key = pending_request.metadata.session_id if pending_request is not None else ""
        if self._round_robin:  # strictly in turn over the replicas' ids (Ray's own lists vary in order)
            ids = sorted(by_id)
            self._turn = (self._turn + 1) % len(ids)
            order = ids[self._turn :] + ids[: self._turn]
        elif key:
            order = self._ring.ranked(key, loads, self._load_factor)
        else:  # nothing to keep together: the least loaded first
            order = sorted(by_id, key=lambda uid: loads.get(uid, 0))
        ranks = [[by_id[uid]] for uid in order if uid in by_id]
        return ranks or [candidate_replicas]
