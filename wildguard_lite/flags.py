"""The runtime's command-line flags, one per `RuntimeConfig` field, declared once.

Every command that runs a model (classify, serve, demo, convert, each `bench` benchmark) adds
the ones it takes with `add_runtime_flags` and turns them back into a `RuntimeConfig` with
`runtime_config`; their defaults are the library's (RuntimeConfig, defaults.py), so a default
changed there shows in every --help and every entry point. argparse and config.py only: cheap
to import, and below the CLI, the server and the benchmarks alike.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from .config import RuntimeConfig, make_config
from .contract import LABEL_KEYS
from .defaults import (
    DEFAULT_KV_CONTEXTS,
    DEFAULT_MAX_THREADS,
    DEFAULT_MODE,
    DEFAULT_N_CTX,
    DEFAULT_KV_TYPE,
    DEFAULT_OVER_CONTEXT,
    KV_TYPES,
    MAX_NICE,
    MAX_SLOTS,
    MODES,
    OVER_CONTEXT_MODES,
    SERVE_KV_CONTEXTS,
    DEFAULT_SLOTS,
)
from .thresholds import parse_threshold_specs

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RuntimeConfig)}

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
    "slots": (
        "--slots",
        {
            "type": int,
            "default": _DEFAULTS["slots"],
            "help": f"llama.cpp: KV sequences the model keeps at once, 1-{MAX_SLOTS} (streams and concurrent "
            "calls each keep their KV cache in one; memory: docs/serving.md) (default %(default)s)",
        },
    ),
    "kv_tokens": (
        "--kv-tokens",
        {
            "type": int,
            "default": _DEFAULTS["kv_tokens"],
            "help": f"llama.cpp: KV cache cells the slots share, at least --n-ctx (default: {DEFAULT_KV_CONTEXTS} "
            f"context up to {DEFAULT_SLOTS} slots, {SERVE_KV_CONTEXTS} beyond; docs/laptop.md)",
        },
    ),
    "max_new_tokens": (
        "--max-new-tokens",
        {
            "type": int,
            "default": _DEFAULTS["max_new_tokens"],
            "help": "generate mode: the most tokens generated for the answer (default %(default)s)",
        },
    ),
    "flash_attn": (
        "--flash-attn",
        {
            "action": argparse.BooleanOptionalAction,
            "default": _DEFAULTS["flash_attn"],
            "help": "llama.cpp: flash attention (default %(default)s)",
        },
    ),
    "use_mmap": (
        "--mmap",
        {
            "action": argparse.BooleanOptionalAction,
            "default": _DEFAULTS["use_mmap"],
            "help": "llama.cpp: map the model file instead of reading it into memory (default %(default)s)",
        },
    ),
    "repack": (
        "--repack",
        {
            "action": argparse.BooleanOptionalAction,
            "default": _DEFAULTS["repack"],
            "help": "llama.cpp: the CPU backend's repacked weight copies (a second copy of the weights in "
            "memory; docs/decisions.md) (default %(default)s)",
        },
    ),
    "one_pass": (
        "--one-pass",
        {
            "action": argparse.BooleanOptionalAction,
            "default": _DEFAULTS["one_pass"],
            "help": "score mode: the three cues and guessed answers in one engine call (default %(default)s)",
        },
    ),
}
RUNTIME_FLAGS = tuple(FLAGS)  # one per RuntimeConfig field (tests/test_runtime_options.py)


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


def runtime_config(args: argparse.Namespace, **overrides: Any) -> RuntimeConfig:
    """The `RuntimeConfig` of the runtime flags in `args` (those the command added; the others
    keep the library's defaults), `overrides` replacing them; checked once, by RuntimeConfig."""
    values = {name: getattr(args, name) for name in RUNTIME_FLAGS if hasattr(args, name)}
    if "thresholds" in values:
        values["thresholds"] = parse_threshold_specs(values["thresholds"])
    return make_config(None, **{**values, **overrides})


# Not a runtime setting but the process's (classify's flag; serve's is its settings field).
NICE_HELP = (
    f"run at a lower CPU priority, 0 (normal) to {MAX_NICE} (lowest), as nice(1): the machine's other "
    "work goes first (docs/cpu.md)"
)
