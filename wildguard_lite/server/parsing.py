"""Reading a request: the body as JSON within its limits, the API key, `/v1/classify`'s items.

Each refusal is an APIError with the status and the fix (server/errors.py); OpenAI's moderation
forms are read in server/moderation.py, LiteLLM's guardrail body in server/guardrail.py.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import sys
from typing import Any

from ..contract import ITEM_FIELDS, check_fields
from ..errors import InvalidInputError
from .errors import APIError, check_count, validated_item
from .metrics import CLIENT_CLOSED
from .settings import ServeSettings


async def read_json(request, settings: ServeSettings, copies: int = 1) -> Any:
    """The body as JSON: at most `max_body_bytes` (times `copies`), within `body_timeout_s`, refused clearly
    when it is not UTF-8 JSON, nests too deeply or holds an integer too long to convert."""
    from starlette.requests import ClientDisconnect

    limit = settings.max_body_bytes * copies
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(
            413,
            f"request body is {declared} bytes; the limit is {limit} (split the input into several requests)",
            "request_too_large",
        )

    async def collect() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(
                    413,
                    f"request body exceeds the limit of {limit} bytes (split the input into several requests)",
                    "request_too_large",
                )
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        raw = await asyncio.wait_for(collect(), settings.body_timeout_s)
    except asyncio.TimeoutError:
        raise APIError(
            408,
            f"the request body did not arrive within {settings.body_timeout_s:g} s; send it "
            "whole (or start serve with a larger --body-timeout)",
            "request_timeout",
            headers={"Connection": "close"},
        ) from None
    except ClientDisconnect:
        raise APIError(CLIENT_CLOSED, "the client closed the connection while sending", "client_closed") from None
    if not raw.strip():
        raise APIError(400, "request body is empty; send a JSON object", "invalid_json")
    try:
        request.state.json = json.loads(raw)  # server/affinity.py reads LiteLLM's ids from it
        return request.state.json
    except UnicodeDecodeError:
        raise APIError(400, "request body is not UTF-8 text; send UTF-8 JSON", "invalid_json") from None
    except json.JSONDecodeError as exc:
        raise APIError(
            400, f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", "invalid_json"
        ) from None
    except RecursionError:
        raise APIError(
            400, "request body nests arrays/objects too deeply; send a flat JSON object", "invalid_json"
        ) from None
    except ValueError as exc:
        if "digits" in str(exc):  # Python converts integers of at most sys.get_int_max_str_digits()
            raise APIError(
                400,
                f"request body holds an integer of more than {sys.get_int_max_str_digits()} "
                "digits; send long numbers as strings",
                "invalid_json",
            ) from None
        raise APIError(400, f"request body is not usable JSON: {exc}", "invalid_json") from None


def parse_classify(body: Any, settings: ServeSettings) -> list[dict[str, Any]]:
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        got = type(body.get("items")).__name__ if isinstance(body, dict) and "items" in body else "no 'items'"
        raise APIError(
            422,
            'request body must be {"items": [{"prompt": ..., "response": ...}, ...]}, '
            f"got {got if isinstance(body, dict) else type(body).__name__}",
            param="items",
        )
    fields(body, ("items",), "request body: ")
    check_count(len(body["items"]), "items", settings)
    items = []
    for i, item in enumerate(body["items"]):
        if isinstance(item, dict):  # a misspelled "respones" would be judged without its response
            fields(item, ITEM_FIELDS, f"items[{i}]: ")
        items.append(validated_item(item, f"items[{i}]"))
    return items


def fields(body: dict, allowed: tuple[str, ...], where: str) -> None:
    try:
        check_fields(body, allowed, where)
    except InvalidInputError as exc:
        raise APIError(422, str(exc), param=where.rstrip(": ") or None) from None


def authorize(request, settings: ServeSettings) -> None:
    """`Authorization: Bearer <key>` (OpenAI clients) or `x-api-key: <key>` (LiteLLM's
    generic guardrail sends its api_key so)."""
    if settings.api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else ""
    expected = settings.api_key.encode()
    if not any(
        hmac.compare_digest(candidate.encode(), expected)
        for candidate in (bearer, request.headers.get("x-api-key", "").strip())
    ):
        raise APIError(
            401,
            "missing or wrong API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
            "authentication_error",
            headers={"WWW-Authenticate": "Bearer"},
        )
