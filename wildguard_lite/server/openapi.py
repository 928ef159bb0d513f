"""The OpenAPI description of each endpoint (served at /openapi.json).

The handlers read their JSON bodies themselves (limits, depth, clear messages), so FastAPI
cannot infer their schemas: they are written here, from the same constants the parsers use,
and `tests/test_openapi.py` fuzzes the server against them with schemathesis (no 5xx, every
answer as documented, bodies outside the schema refused).
"""

from __future__ import annotations

from typing import Any

from ..contract import ITEM_FIELDS, LABEL_KEYS, LABEL_VALUES
from .settings import ServeSettings

TEXT = {"type": "string"}
EXCHANGE = {
    "type": "object",
    "required": ["prompt"],
    "additionalProperties": False,
    "properties": dict(zip(ITEM_FIELDS, (TEXT, {"type": ["string", "null"]}))),
    "description": "one exchange: the user's prompt and optionally the assistant's response",
}
TEXT_PART = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"const": "text"}, "text": TEXT},
    "description": "an OpenAI content part; images are refused (WildGuard reads text only)",
}
RESULT = {
    "type": "object",
    "description": "WildGuard's three labels (null: not asked, or not readable) and P(yes) of each",
    "required": [*LABEL_KEYS, "is_parsing_error", "scores"],
    "properties": {
        **{key: {"enum": [*LABEL_VALUES[key].values(), None]} for key in LABEL_KEYS},
        "is_parsing_error": {"type": "boolean"},
        "scores": {"type": "object", "properties": {key: {"type": ["number", "null"]} for key in LABEL_KEYS}},
    },
}
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {"message": TEXT, "type": TEXT, "code": {"type": ["integer", "string", "null"]}},
        }
    },
}
# Why each error status is answered (the message says which case and what to do).
ERROR_STATUSES = {
    "400": "the body is not JSON, is empty, or nests too deeply",
    "401": "missing or wrong API key (when serve has --api-key-file)",
    "408": "the body did not arrive within --body-timeout",
    "413": "the body, the item count or an input's tokens are over the limits",
    "422": "the JSON is not a request of this endpoint (the message names the field)",
    "429": "all workers busy and the queue full (see Retry-After)",
    "503": "starting or shutting down; with --over-budget error, a queue too deep for --timeout (see Retry-After)",
    "504": "with --over-budget error only: not classified within --timeout (by default such an input is "
    "answered 200, flagged, with the reason in 'not_judged')",
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(summary: str, body: dict[str, Any] | None, ok: dict[str, Any], errors: list[str]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": _json(ok, "classified"), **{s: _json(ERROR, ERROR_STATUSES[s]) for s in errors}},
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return operation


def _post_errors(settings: ServeSettings) -> list[str]:
    return [s for s in ERROR_STATUSES if s != "401" or settings.api_key is not None]


def moderation_operation(settings: ServeSettings) -> dict[str, Any]:
    listed = {"type": "array", "minItems": 1, "maxItems": settings.max_items, "items": {"anyOf": [TEXT, EXCHANGE]}}
    parts = {"type": "array", "minItems": 1, "items": TEXT_PART, "description": "content parts: one input"}
    body = {
        "type": "object",
        "required": ["input"],
        "properties": {
            "input": {"anyOf": [TEXT, listed, parts]},
            "model": {"description": "ignored (OpenAI's model name)"},
        },
    }
    result = {
        "type": "object",
        "required": ["flagged", "categories", "category_scores", "wildguard"],
        "properties": {
            "flagged": {"type": "boolean"},
            "categories": {"type": "object", "additionalProperties": {"type": "boolean"}},
            "category_scores": {"type": "object", "additionalProperties": {"type": "number"}},
            "category_applied_input_types": {"type": "object"},
            "wildguard": RESULT,
        },
    }
    ok = {
        "type": "object",
        "required": ["id", "model", "results"],
        "properties": {"id": TEXT, "model": TEXT, "results": {"type": "array", "items": result}},
    }
    return _operation("OpenAI's moderation API: one result per input", body, ok, _post_errors(settings))


def classify_operation(settings: ServeSettings) -> dict[str, Any]:
    body = {
        "type": "object",
        "required": ["items"],
        "additionalProperties": False,
        "properties": {"items": {"type": "array", "minItems": 1, "maxItems": settings.max_items, "items": EXCHANGE}},
    }
    ok = {
        "type": "object",
        "required": ["model", "results"],
        "properties": {"model": TEXT, "results": {"type": "array", "items": RESULT}},
    }
    return _operation("WildGuard's labels and P(yes) for each exchange", body, ok, _post_errors(settings))


def guardrail_operation(settings: ServeSettings) -> dict[str, Any]:
    # LiteLLM sends more fields than these (request_data, ...): they are accepted and unused.
    body = {
        "type": "object",
        "required": ["input_type"],
        "properties": {
            "input_type": {"enum": ["request", "response"]},
            "texts": {"type": ["array", "null"], "maxItems": settings.max_items, "items": TEXT},
            "images": {"type": ["array", "null"], "maxItems": 0, "description": "refused when not empty"},
            "structured_messages": {"type": ["array", "null"], "items": {"type": "object"}},
            "litellm_call_id": {"type": ["string", "null"], "maxLength": 256},
        },
    }
    ok = {
        "type": "object",
        "required": ["action", "wildguard"],
        "properties": {
            "action": {"enum": ["BLOCKED", "NONE"]},
            "blocked_reason": TEXT,
            # response checks: per text, the trailing characters LiteLLM must hold back
            "stream_holdback_chars": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "wildguard": {"type": "array", "items": RESULT},
        },
    }
    return _operation("LiteLLM's Generic Guardrail API", body, ok, _post_errors(settings))


def plain_operation(name: str, settings: ServeSettings | None = None) -> dict[str, Any]:
    if name == "health":
        status = {"type": "object", "required": ["status"], "properties": {"status": {"enum": ["ok", "unavailable"]}}}
        return {
            "summary": "ready or not",
            "responses": {"200": _json(status, "ready"), "503": _json(status, "starting or shutting down")},
        }
    responses: dict[str, Any] = {
        "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": TEXT}}}
    }
    if settings is not None and settings.api_key is not None:
        responses["401"] = _json(ERROR, ERROR_STATUSES["401"])
    return {"summary": "Prometheus metrics", "responses": responses}
