"""The runtime's command-line flags (--threads, --n-ctx, --mode, --threshold), declared once.

Every command that runs a model (classify, serve, demo, convert, each `bench` benchmark) adds
the ones it takes with `add_runtime_flags`; their defaults are the library's (defaults.py), so
a default changed there shows in every --help and every entry point. argparse only: cheap to
import, and below the CLI, the server and the benchmarks alike.
"""

from __future__ import annotations

import argparse
from typing import Any

from .contract import LABEL_KEYS
from .defaults import (
    DEFAULT_MAX_THREADS,
    DEFAULT_MODE,
    DEFAULT_N_CTX,
    DEFAULT_KV_TYPE,
    DEFAULT_OVER_CONTEXT,
    KV_TYPES,
    MAX_NICE,
    MODES,
    OVER_CONTEXT_MODES,
)

# dest -> (flag, argparse keywords). The dest is RuntimeConfig's field name.
FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "threads": (
        "--threads",
        {
            "type": int,
            "default": None,
            "help": f"CPU threads of the engine (default: the available cores, at most {DEFAULT_MAX_THREADS})",
        },
    ),
    "n_ctx": (
        "--n-ctx",
        {
            "type": int,
            "default": DEFAULT_N_CTX,
            "help": "context length in tokens (default %(default)s; at most the model's trained context)",
        },
    ),
    "mode": (
        "--mode",
        {
            "choices": MODES,
            "default": DEFAULT_MODE,
            "help": "score: read the answers' probabilities; generate: greedy generation parsed as the official "
            "package does (default %(default)s)",
        },
    ),
    "kv_type": (
        "--kv-type",
        {
            "choices": KV_TYPES,
            "default": DEFAULT_KV_TYPE,
            "help": "KV cache value type: q8_0 takes 0.53x the memory of f16 (needs flash attention, on by "
            "default; docs/laptop.md) (default %(default)s)",
        },
    ),
    "over_context": (
        "--over-context",
        {
            "choices": OVER_CONTEXT_MODES,
            "default": DEFAULT_OVER_CONTEXT,
            "help": "input longer than the context: 'split' judges it in overlapping windows (harmful when any "
            "window is), 'error' refuses it (HTTP 413) (default %(default)s)",
        },
    ),
    "thresholds": (
        "--threshold",
        {
            "action": "append",
            "metavar": "LABEL=P",
            "default": None,
            "help": f"label 'yes' when P(yes) >= P, e.g. {LABEL_KEYS[-1]}=0.3 (repeatable; default: the model's "
            "argmax)",
        },
    ),
}
RUNTIME_FLAGS = tuple(FLAGS)


def add_runtime_flags(parser: argparse.ArgumentParser | Any, *names: str, **defaults: Any) -> None:
    """Add the named runtime flags (`RUNTIME_FLAGS`) to `parser` (or an argument group), in the
    order given. `defaults` replaces a flag's default where a tool measures under other
    conditions (a benchmark's shorter context); the help shows the value in force."""
    unknown = [n for n in names if n not in FLAGS]
    if unknown:
        raise ValueError(f"unknown runtime flag(s) {unknown}; known: {', '.join(RUNTIME_FLAGS)}")
    # Only a flag whose help prints its default may take another one: the help must not lie.
    fixed = [n for n in defaults if n not in names or "%(default)s" not in FLAGS[n][1]["help"]]
    if fixed:
        raise ValueError(f"no other default for {fixed}: not added here, or its help states the library's default")
    for name in names:
        flag, kwargs = FLAGS[name]
        kwargs = {**kwargs, "dest": name}
        if name in defaults:
            kwargs["default"] = defaults[name]
        parser.add_argument(flag, **kwargs)


# Not a runtime setting but the process's (classify's flag; serve's is its settings field).
NICE_HELP = (
    f"run at a lower CPU priority, 0 (normal) to {MAX_NICE} (lowest), as nice(1): the machine's other "
    "work goes first (docs/cpu.md)"
)
