"""Errors with a clear, one-line message: what went wrong, where, and how to fix it.

Library code raises these; only the CLI turns them into an exit status.
"""

from __future__ import annotations


class WildGuardLiteError(Exception):
    """Base class: the message is meant for the user, as is."""


class InvalidInputError(WildGuardLiteError, ValueError):
    """An item, a file of items or an option is not what it must be."""


class InputTooLongError(InvalidInputError):
    """The formatted exchange does not fit the context; nothing is truncated."""

    def __init__(self, n_tokens: int, limit: int, where: str = ""):
        self.n_tokens = n_tokens
        self.limit = limit
        prefix = f"{where}: " if where else ""
        super().__init__(
            f"{prefix}input is {n_tokens} tokens but the context holds {limit} "
            f"(including the answer); shorten the text or load the model with a larger n_ctx"
        )


class ClassifierClosedError(WildGuardLiteError, RuntimeError):
    """A Classifier was used after close()."""


class ClassificationCancelled(WildGuardLiteError):
    """The caller cancelled a call (its cancel event was set); the engine stopped the work."""


class ClassificationTimeout(WildGuardLiteError, TimeoutError):
    """A call ran past its deadline (`timeout=`); the engine stopped the work."""


class EngineError(WildGuardLiteError, RuntimeError):
    """The engine failed on input that passed every check (a bug or an exhausted resource)."""


class ModelFileError(WildGuardLiteError):
    """A model file is missing, truncated, corrupt or of the wrong kind."""


class MissingDependencyError(WildGuardLiteError, ImportError):
    """An optional heavy dependency is not installed."""


def require(module: str, extra: str):
    """Import an optional dependency or raise with the install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed: pip install 'wildguard-lite[{extra}]' ({exc})"
        ) from None
