"""Error answers and the checks every endpoint shares."""

from __future__ import annotations

from typing import Any

from ..contract import validate_item
from ..errors import InvalidInputError
from .settings import ServeSettings


class APIError(Exception):
    """An error answer: status, one-line message, OpenAI-style error type and extra fields."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
        **extra: Any,
    ):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        # `code` is a string: OpenAI's SDKs type it string or null (openai-node's APIError).
        return {"error": {"message": self.message, "type": self.kind, "code": str(self.status), **self.extra}}


def check_count(n: int, field_name: str, settings: ServeSettings) -> None:
    if n == 0:
        raise APIError(422, f"'{field_name}' is empty; give at least one item", param=field_name)
    if n > settings.max_items:
        raise APIError(
            413,
            f"'{field_name}' has {n} items; the limit is {settings.max_items} per request "
            "(split it, or start serve with a larger --max-items)",
            "request_too_large",
            param=field_name,
        )


def check_text(text: str, where: str) -> str:
    """Text the tokenizer can take: JSON can carry lone surrogates ("\\ud800"), which are not
    Unicode characters and cannot be encoded."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise APIError(
            422,
            f"{where}: the text holds a lone surrogate (\\u{ord(text[exc.start]):04x}) at "
            f"character {exc.start}, which is not a Unicode character; send valid UTF-8 text",
            param=where,
        ) from None
    return text


def validated_item(entry: Any, where: str) -> dict[str, Any]:
    """`{"prompt": ..., "response": ...}` checked as the Python API checks it, plus text checks."""
    try:
        prompt, response = validate_item(entry)
    except InvalidInputError as exc:
        raise APIError(422, f"{where}: {exc}", param=where) from None
    item = {"prompt": check_text(prompt, f"{where}.prompt")}
    if response is not None:
        item["response"] = check_text(response, f"{where}.response")
    return item
