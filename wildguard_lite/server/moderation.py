"""`/v1/moderations`: OpenAI's request forms in, OpenAI's `ModerationCreateResponse` out.

Every result carries all of OpenAI's category keys (in `categories`, `category_scores` and
`category_applied_input_types`), so strict clients (the OpenAI SDK's `model_validate`,
LiteLLM's proxy) accept it; WildGuard's own categories ride along as extra keys.
"""

from __future__ import annotations

from typing import Any

from ..contract import LABEL_VALUES
from .errors import APIError, check_count, validated_item
from .settings import ServeSettings

# OpenAI's 13 moderation categories, spelled as on the wire (openai-python's aliases).
OPENAI_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
# WildGuard's categories: name -> the label key whose "yes" sets it.
WILDGUARD_CATEGORIES = {
    "harmful_request": "prompt_harmfulness",
    "harmful_response": "response_harmfulness",
    "refusal": "response_refusal",
}
# A refusal is not a reason to block: only these set `flagged`.
FLAGGING_CATEGORIES = ("harmful_request", "harmful_response")
# An extra category, true when the verdict could not be read (the result is then flagged).
PARSING_ERROR_CATEGORY = "parsing_error"
# --openai-categories -> the OpenAI categories a harmful verdict sets.
MAPPED_CATEGORIES = {"all": OPENAI_CATEGORIES, "illicit": ("illicit",), "none": ()}


def parse_moderation(body: Any, settings: ServeSettings) -> list[dict[str, Any]]:
    """The items to classify for OpenAI's `input`: a string (a user prompt), a list of strings
    (one result each), a list of content parts `{"type": "text", "text": ...}` (one input, as
    OpenAI reads it: the texts joined by newlines), plus our extension, objects
    `{"prompt": ..., "response": ...}` to judge an assistant response (one result each)."""
    if not isinstance(body, dict):
        raise APIError(422, f"request body must be a JSON object with 'input', got {type(body).__name__}")
    if "input" not in body:
        raise APIError(
            422,
            "missing required field 'input' (a string, a list of strings, a list of text parts "
            '{"type": "text", "text": ...}, or objects {"prompt": ..., "response": ...})',
            param="input",
        )
    raw = body["input"]
    if isinstance(raw, list) and raw and all(isinstance(e, dict) and "type" in e for e in raw):
        return [{"prompt": "\n".join(text_part(part, f"input[{i}]") for i, part in enumerate(raw))}]
    entries = raw if isinstance(raw, list) else [raw]
    check_count(len(entries), "input", settings)
    items = []
    for i, entry in enumerate(entries):
        where = f"input[{i}]" if isinstance(raw, list) else "input"
        if isinstance(entry, str):
            items.append(validated_item({"prompt": entry}, where))
        elif isinstance(entry, dict) and "type" in entry:
            raise APIError(
                422,
                f"{where}: content parts must not be mixed with strings or exchange objects; "
                "send a list of parts (one input) or a list of strings",
                param=where,
            )
        elif isinstance(entry, dict):
            unknown = sorted(set(entry) - {"prompt", "response"})
            if unknown:
                raise APIError(
                    422, f"{where}: unknown field(s) {', '.join(unknown)}; allowed: prompt, response", param=where
                )
            items.append(validated_item(entry, where))
        else:
            raise APIError(
                422,
                f"{where}: must be a string, a text part or an object "
                f'{{"prompt": ..., "response": ...}}, got {type(entry).__name__}',
                param=where,
            )
    return items


def text_part(part: dict[str, Any], where: str) -> str:
    """The text of one content part; images are refused (WildGuard reads text only)."""
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise APIError(
                422, f"{where}: a text part needs 'text' as a string, got {type(text).__name__}", param=where
            )
        return validated_item({"prompt": text}, where)["prompt"]
    if kind in ("image_url", "image", "input_image"):
        raise APIError(
            422,
            f"{where}: image input is not supported: WildGuard judges text only; send the text "
            "parts alone (moderate images with another model)",
            "unsupported_input",
            param=where,
        )
    raise APIError(
        422, f'{where}: unknown content part type {kind!r}; send {{"type": "text", "text": ...}}', param=where
    )


def to_moderation(result: dict[str, Any], openai_categories: str) -> dict[str, Any]:
    """One WildGuard result as an OpenAI moderation result.

    Labels not asked (n/a) are false/0. A verdict that could not be read (`is_parsing_error`)
    is flagged, never passed: it sets `parsing_error` and the mapped OpenAI categories, with
    score 1.0. A harmful verdict sets the OpenAI categories chosen by `openai_categories`,
    scored with the highest harm probability.
    """
    scores = result.get("scores") or {}
    categories: dict[str, bool] = {}
    category_scores: dict[str, float] = {}
    for name, key in WILDGUARD_CATEGORIES.items():
        categories[name] = result.get(key) == LABEL_VALUES[key]["yes"]
        category_scores[name] = float(scores.get(key) or 0.0)
    unreadable = bool(result.get("is_parsing_error"))
    flagged = unreadable or any(categories[name] for name in FLAGGING_CATEGORIES)
    harm_score = 1.0 if unreadable else max(category_scores[name] for name in FLAGGING_CATEGORIES)
    mapped = MAPPED_CATEGORIES[openai_categories]
    openai_flags = {name: flagged and name in mapped for name in OPENAI_CATEGORIES}
    openai_scores = {name: harm_score if name in mapped else 0.0 for name in OPENAI_CATEGORIES}
    categories[PARSING_ERROR_CATEGORY] = unreadable
    category_scores[PARSING_ERROR_CATEGORY] = 1.0 if unreadable else 0.0
    all_categories = {**openai_flags, **categories}
    return {
        "flagged": flagged,
        "categories": all_categories,
        "category_scores": {**openai_scores, **category_scores},
        # WildGuard reads text only; ["text"] is valid for every category in OpenAI's schema.
        "category_applied_input_types": {name: ["text"] for name in all_categories},
        "wildguard": result,
    }
