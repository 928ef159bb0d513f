"""Decide up front, fail closed: what cannot be judged within `--timeout` is flagged at once.

A request's tokens are counted before it is queued (`Classifier.plan`: the windows a long input
is judged in, each with its answer's room). From the engine's measured rate (tokens evaluated
per second while busy, a running estimate per server, seeded by a short call at start-up) and
the work admitted before it, the server knows whether the request can finish before its
deadline. What cannot, too long or behind too deep a queue, is answered at once; and a request
whose deadline passes mid-way is answered the same way. With `--over-budget flag` (the
default) that answer is a verdict: HTTP 200, every item flagged, with the reason in the
result's `not_judged` (docs/long-inputs.md). An error status would be a bypass: openai-guardrails
reads a 504 as "not tripped", LiteLLM's `fail_open` passes a 502/503/504. `--over-budget error`
answers 413 (too long), 503 (queue too deep) or 504 (deadline passed mid-way) instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import TYPE_CHECKING, Any

from ..contract import LABEL_KEYS
from ..errors import InputTooLongError, InvalidInputError
from .affinity import route_key
from .errors import APIError
from .memory import trim_soon
from .metrics import CLIENT_CLOSED

if TYPE_CHECKING:
    from ..runtime import Classifier
    from .pool import WorkerPool
    from .settings import ServeSettings

# Why an item was not judged (the `reason` of a result's `not_judged`).
NOT_JUDGED_REASONS = ("too_long", "queue_too_deep", "deadline")
# The start-up call that seeds the rate: ordinary words, about 60 tokens of text plus the
# template, its rate divided by CALIBRATION_DISCOUNT. At 7B a short input runs slower per token
# than a long one (less batching); on a tiny model faster (attention over a 4k window
# dominates: the toy ran a short call 4x faster per token than its long inputs). Divided, the
# seed errs on the slow side for both: long inputs are refused up front a little early until
# real traffic (each busy second weighs as much as the start-up call's) moves it.
CALIBRATION_DISCOUNT = 4.0
CALIBRATION_TEXT = " ".join(["Could you suggest a few good books about birds and the places to watch them?"] * 4)


def calibrate(classifier: "Classifier") -> tuple[float | None, float]:
    """(tokens per second, seconds) of one short call: the seed of the running estimate, which
    weighs as much as the seconds it took."""
    before = classifier.backend.tokens_evaluated
    start = time.perf_counter()
    classifier.classify([{"prompt": CALIBRATION_TEXT}])
    seconds = time.perf_counter() - start
    tokens = classifier.backend.tokens_evaluated - before
    return (tokens / seconds / CALIBRATION_DISCOUNT if tokens > 0 and seconds > 0 else None), seconds


def not_judged(reason: str, message: str) -> dict[str, Any]:
    """The fail-closed result of an item the server did not judge: no label, `is_parsing_error`
    set (every reader of a result flags it: /v1/moderations' `flagged`, the guardrail's BLOCKED,
    a library caller's check), and `not_judged` saying why."""
    assert reason in NOT_JUDGED_REASONS
    result: dict[str, Any] = {key: None for key in LABEL_KEYS}
    result["is_parsing_error"] = True
    result["scores"] = {key: None for key in LABEL_KEYS}
    result["not_judged"] = {"reason": reason, "message": message}
    return result


def over_budget_error(reason: str, message: str, pool: "WorkerPool") -> APIError:
    """`--over-budget error`: the status that says the same."""
    if reason == "too_long":
        return APIError(413, message, "input_too_long")
    if reason == "queue_too_deep":
        seconds = pool.retry_after()
        return APIError(503, message, "overloaded", headers={"Retry-After": str(seconds)})
    return APIError(504, message, "timeout")


def client_key(request) -> str:
    """Who sent a request, for the per-client limits: the API key it presents (hashed), else
    its address."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    key = token.strip() if scheme.lower() == "bearer" else request.headers.get("x-api-key", "").strip()
    if key:
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return "address:" + (request.client.host if request.client is not None else "unknown")


async def until_disconnect(request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def judge(request, items: list[dict[str, Any]], pool: "WorkerPool", settings: "ServeSettings") -> list[dict]:
    """The verdicts of `items`, or fail-closed results (`not_judged`) for what cannot be judged
    within the request's deadline (`--timeout`, counted from here: planning, queue and run)."""
    start = time.monotonic()
    deadline = start + settings.request_timeout_s
    try:
        return await _judge(request, items, pool, settings, deadline)
    finally:
        trim_soon(items)  # a large text's memory goes back to the system, not to a thread's heap


async def _judge(request, items, pool: "WorkerPool", settings: "ServeSettings", deadline: float) -> list[dict]:
    try:
        plans = await asyncio.to_thread(pool.classifier.plan, items)
    except InputTooLongError as exc:
        raise APIError(413, str(exc), "input_too_long", n_tokens=exc.n_tokens, limit=exc.limit) from None
    except InvalidInputError as exc:
        raise APIError(422, str(exc)) from None
    tokens = pool.classifier.plan_tokens(plans)

    def refuse(reason: str, message: str) -> list[dict[str, Any]]:
        pool.count_not_judged(reason, len(items))
        if settings.over_budget == "error":
            raise over_budget_error(reason, message, pool)
        return [not_judged(reason, message) for _ in items]

    left = deadline - time.monotonic()
    rate = pool.current_rate()
    if rate is not None and tokens / rate > left:
        return refuse(
            "too_long",
            f"{tokens} tokens take about {tokens / rate:.1f} s at this server's {rate:.0f} tokens/s, "
            f"more than the {settings.request_timeout_s:g} s deadline (--timeout); flagged to fail "
            "closed without judging (send it in shorter pieces, or raise --timeout)",
        )
    seconds = pool.estimate_seconds(tokens)
    if seconds is not None and seconds > left:
        return refuse(
            "queue_too_deep",
            f"with the work queued before it, {tokens} tokens would finish in about {seconds:.1f} s, "
            f"past the {settings.request_timeout_s:g} s deadline (--timeout); flagged to fail closed "
            "without judging (retry later)",
        )
    # The affinity key: a fleet's pool (serve --ray) sends a conversation's calls to one replica.
    key = route_key(request.headers, getattr(request.state, "json", None), items)
    job = pool.try_submit(items, plans, tokens, client_key(request), key)
    if isinstance(job, str):
        seconds = pool.retry_after()
        raise APIError(
            429, f"{job}; retry after {seconds} s", "rate_limit_exceeded", headers={"Retry-After": str(seconds)}
        )
    # A client that leaves while its request waits frees its place in the queue.
    watcher = asyncio.ensure_future(until_disconnect(request))
    try:
        done, _ = await asyncio.wait(
            {job.future, watcher}, timeout=max(0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        watcher.cancel()
    if job.future in done:
        try:
            return job.future.result()
        except InputTooLongError as exc:
            raise APIError(413, str(exc), "input_too_long", n_tokens=exc.n_tokens, limit=exc.limit) from None
        except InvalidInputError as exc:
            raise APIError(422, str(exc)) from None
    # Nobody will read the engine's answer: stop the work so the worker is free for the next request.
    pool.abandon(job, "client_closed" if watcher in done else "timeout")
    if watcher in done:
        raise APIError(CLIENT_CLOSED, "the client closed the connection before the answer", "client_closed")
    message = (
        f"classification did not finish within {settings.request_timeout_s:g} s (--timeout, queue "
        "wait included); flagged to fail closed (retry later, send shorter items, or raise --timeout)"
    )
    partial = dict(job.partial)  # items judged before the deadline keep their verdicts
    pool.count_not_judged("deadline", len(items) - len(partial))
    if settings.over_budget == "error":
        raise over_budget_error("deadline", message.replace("flagged to fail closed", "stopped"), pool)
    return [partial[i] if i in partial else not_judged("deadline", message) for i in range(len(items))]
