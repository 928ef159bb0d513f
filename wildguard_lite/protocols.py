"""What the layers on top of the Classifier need of it, declared small: `aio.py` and
`streaming.py` type against `ClassifierLike` and never import runtime.py (whose `stream` and
`aclassify` import them), so no import circle remains, even at type level."""

from __future__ import annotations

import threading
from typing import Any, Callable, Mapping, Protocol, Sequence

from .backends.base import Engine, Interrupt


class ExchangeEncoder(Protocol):
    def encode_exchange(self, prompt: str, response: str | None = None) -> list[int]: ...


class ClassifierLike(Protocol):
    """A `runtime.Classifier` as streams and the asyncio front see it."""

    @property
    def tokenizer(self) -> ExchangeEncoder: ...

    @property
    def engine(self) -> Engine: ...

    def classify(
        self,
        items: Sequence[Mapping[str, Any]],
        on_result: Callable[[int, dict[str, Any]], None] | None = None,
        *,
        cancel: threading.Event | None = None,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]: ...

    def score_exchange(
        self,
        prompt: str,
        response: str,
        guess: Sequence[Sequence[int]] | None = None,
        interrupt: Interrupt | None = None,
    ) -> tuple[dict[str, Any], list[tuple[int, ...]], int]: ...
