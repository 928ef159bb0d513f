"""`ServeSettings`: every option of `serve`, declared once.

Each field carries its default and its help; `add_arguments` derives the argparse flags from
the fields and `from_args` builds the settings back, so a new option is one field here. How the
model runs is one field, `runtime` (a `RuntimeConfig`: mode, threads, n_ctx, slots, kv_tokens,
thresholds, over_context, ...), whose flags are the runtime flags every command shares
(`wildguard_lite.flags`) and whose checks are RuntimeConfig's own; `ServeSettings(n_ctx=512)`
and `settings.n_ctx` reach it too.
No web framework is imported here: `wildguard-lite serve --help` stays light.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import InvalidInputError
from ..config import RUNTIME_FIELDS, RuntimeConfig, make_config
from ..defaults import (
    DEFAULT_NICE,
    MAX_NICE,
    MAX_SLOTS,
    SERVE_KV_CONTEXTS,
    SERVE_SLOTS,
    default_kv_tokens,
    default_threads,
)
from ..flags import NICE_HELP, RUNTIME_FLAGS, add_runtime_flags, runtime_config

# How a harmful verdict shows in OpenAI's category names (see docs/serving.md).
OPENAI_CATEGORY_MODES = ("all", "illicit", "none")
# serve's runtime defaults: the library's but for the slots (8 streams or calls at once; their
# KV pool holds two contexts: kv_pool_tokens).
SERVE_RUNTIME = RuntimeConfig(slots=SERVE_SLOTS)
# What an input that cannot be judged within --timeout gets (server/budget.py).
OVER_BUDGET_MODES = ("flag", "error")
# --affinity with --ray: "on" keeps a conversation on one replica, "off" round-robins (docs/cluster.md).
AFFINITY_MODES = ("on", "off")


def read_api_key(path: str | os.PathLike) -> str:
    """The key in a file (first line, stripped), so it never appears in the process list."""
    try:
        key = Path(path).read_text(encoding="utf-8").strip().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise InvalidInputError(f"--api-key-file {path}: cannot read it ({reason})") from None
    if not key or not key[0].strip():
        raise InvalidInputError(f"--api-key-file {path}: the file is empty; put the key on its first line")
    return key[0].strip()


MAX_SECONDS = 86_400.0  # a timeout beyond a day is a mistake (and inf overflows the event loop's clock)
MAX_CACHE_MB = float(1 << 20)  # 1 TiB
# Workers are threads waiting on one engine that runs at most MAX_SLOTS sequences at once: more
# than a few times that only queue (and 100,000 failed with "can't start new thread").
MAX_WORKERS = 4 * MAX_SLOTS


def at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), "must be 0 or more" if low == 0 else f"must be at least {low}"


def in_range(low: float, high: float, what: str) -> tuple[Callable[[Any], bool], str]:
    # isfinite: argparse's float() takes "nan", "inf" and "1e999".
    return (lambda v: math.isfinite(v) and low <= v <= high), f"must be {what}"


def seconds() -> tuple[Callable[[Any], bool], str]:
    # inf overflowed uvicorn's shutdown timer (OverflowError); nan compares false to everything.
    return (lambda v: math.isfinite(v) and 0 < v <= MAX_SECONDS), f"must be positive, at most {MAX_SECONDS:g} s"


def option(
    default: Any,
    flag: str,
    help: str,
    *,
    type: Callable | None = None,
    choices: tuple | None = None,
    convert: Callable | None = None,
    show_default: bool = True,
    action: str | None = None,
    check: tuple[Callable[[Any], bool], str] | None = None,
    **kwargs,
) -> Any:
    """A settings field with its command-line flag. `convert` maps the parsed flag value to the
    field value (e.g. a key file to the key); `type` parses the flag's text; `check` is
    (predicate, what it requires), applied to a value that is set."""
    meta = {
        "flag": flag,
        "help": help,
        "type": type,
        "choices": choices,
        "convert": convert,
        "show_default": show_default,
        "action": action,
        "check": check,
    }
    return field(default=default, metadata=meta, **kwargs)


@dataclass(frozen=True, init=False)
class ServeSettings:
    """Everything `serve` needs. `runtime` is how the one shared model runs (its `threads`
    default to the library's, `defaults.default_threads()`); RuntimeConfig's fields are also
    accepted as keywords (`ServeSettings(n_ctx=512)`) and read as attributes."""

    model: Path | None = option(
        None,
        "--model",
        "a .gguf file made by 'wildguard-lite convert' (or an ONNX variant it made)",
        type=Path,
        show_default=False,
    )
    host: str = option("127.0.0.1", "--host", "address to bind (0.0.0.0 for all)")
    port: int = option(
        8000, "--port", "port (0: any free port)", type=int, check=in_range(0, 65535, "0-65535 (0: any free port)")
    )
    workers: int = option(
        SERVE_SLOTS,
        "--workers",
        "requests classified at once, sharing the one loaded model (their engine calls run batched)",
        type=int,
        check=in_range(1, MAX_WORKERS, f"from 1 to {MAX_WORKERS} (each is a thread; the engine runs --slots at once)"),
    )
    # serve's own slots (the library's are sized for one app): SERVE_RUNTIME's.
    runtime: RuntimeConfig = field(default_factory=lambda: SERVE_RUNTIME, metadata={"runtime": True})
    nice: int = option(
        DEFAULT_NICE,
        "--nice",
        NICE_HELP,
        type=int,
        check=in_range(0, MAX_NICE, f"an integer from 0 (normal priority) to {MAX_NICE} (lowest)"),
    )
    max_queue: int = option(
        16, "--max-queue", "requests waiting beyond the busy workers before answering 429", type=int, check=at_least(0)
    )
    client_max_requests: int = option(
        0,
        "--client-max-requests",
        "requests one client (its API key, else its address) may have admitted at once, 429 beyond; 0: no "
        "limit (behind one gateway every user is one client, and a 429 is an error fail-open clients pass)",
        type=int,
        check=at_least(0),
    )
    client_max_tokens: int = option(
        0,
        "--client-max-tokens",
        "tokens one client may have admitted at once, 429 beyond (its first request is admitted whatever its "
        "size); 0: no limit",
        type=int,
        check=at_least(0),
    )
    request_timeout_s: float = option(
        60.0,
        "--timeout",
        "seconds a request may queue and run; what cannot be judged within it (known up front from its "
        "tokens and the engine's measured rate, or found mid-way) is answered per --over-budget",
        type=float,
        check=seconds(),
    )
    over_budget: str = option(
        "flag",
        "--over-budget",
        "an input that cannot be judged within --timeout (too long, queue too deep, deadline passed): "
        "'flag' answers 200 with it flagged and the reason in 'not_judged' (fail closed: clients "
        "that pass on errors cannot be bypassed so), 'error' answers 413/503/504 instead",
        choices=OVER_BUDGET_MODES,
    )
    body_timeout_s: float = option(
        30.0,
        "--body-timeout",
        "seconds a client may take to send its request body before 408",
        type=float,
        check=seconds(),
    )
    header_timeout_s: float = option(
        10.0,
        "--header-timeout",
        "seconds a client may take to send a request's line and headers before 408 and a closed connection",
        type=float,
        check=seconds(),
    )
    max_body_bytes: int = option(
        1 << 20, "--max-body-bytes", "request body limit in bytes, 413 beyond", type=int, check=at_least(1024)
    )
    max_items: int = option(64, "--max-items", "items per request, 413 beyond", type=int, check=at_least(1))
    prefix_cache_mb: float = option(
        0.0,
        "--prefix-cache-mb",
        "memory cap of a KV prefix cache shared by the workers (0: off; the engine's slots already keep "
        "recent prompts, and in LiteLLM's request-then-reply pattern the cache was never hit)",
        type=float,
        check=in_range(0, MAX_CACHE_MB, f"MB from 0 (off) to {MAX_CACHE_MB:.0f}"),
    )
    openai_categories: str = option(
        "all",
        "--openai-categories",
        "how a harmful verdict shows in /v1/moderations' OpenAI category names: 'all' sets every OpenAI "
        "category (category-based clients block whatever categories they check), 'illicit' only "
        "'illicit', 'none' leaves them false (only 'flagged' and the WildGuard keys carry it)",
        choices=OPENAI_CATEGORY_MODES,
    )
    api_key: str | None = option(
        None,
        "--api-key-file",
        "require 'Authorization: Bearer <key>' (or 'x-api-key: <key>') with the key on this file's first line",
        type=Path,
        convert=read_api_key,
        show_default=False,
        repr=False,
    )
    ray: str | None = option(
        None,
        "--ray",
        "serve with model replicas on a Ray cluster (pip install 'wildguard-lite[fleet]'): its address "
        "(HOST:PORT of its head), 'auto' (the cluster this machine joined with 'ray start') or 'local' "
        "(start one in this process); this process stays the HTTP front (docs/cluster.md)",
        show_default=False,
    )
    replicas: int = option(
        1,
        "--replicas",
        "with --ray: model replicas, each loading the model with --threads engine threads and --slots slots",
        type=int,
        check=in_range(1, 4096, "from 1 to 4096"),
    )
    affinity: str = option(
        "on",
        "--affinity",
        "with --ray: 'on' sends every call of a conversation to the replica holding its KV "
        "(bounded-load consistent hashing), 'off' spreads calls round-robin",
        choices=AFFINITY_MODES,
    )

    def __init__(self, runtime: RuntimeConfig | None = None, **values: Any):
        # RuntimeConfig's fields given as keywords join `runtime` (checked there, once).
        object.__setattr__(
            self,
            "runtime",
            make_config(
                SERVE_RUNTIME if runtime is None else runtime,
                **{k: values.pop(k) for k in RUNTIME_FIELDS if k in values},
            ),
        )
        for f in dataclasses.fields(self):
            if f.name == "runtime":
                continue
            if f.name in values:
                value = values.pop(f.name)
            elif f.default is not dataclasses.MISSING:
                value = f.default
            else:
                factory: Callable[[], Any] = f.default_factory  # type: ignore[assignment]
                value = factory()
            object.__setattr__(self, f.name, value)
        if values:
            raise TypeError(f"ServeSettings got unknown option(s) {', '.join(sorted(values))}")
        self.__post_init__()

    def __getattr__(self, name: str) -> Any:
        """RuntimeConfig's fields read through (`settings.n_ctx` is `settings.runtime.n_ctx`)."""
        if name in RUNTIME_FIELDS:
            return getattr(self.runtime, name)
        raise AttributeError(f"'ServeSettings' object has no attribute '{name}'")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value, check = getattr(self, f.name), f.metadata.get("check")
            if check is not None and value is not None and not check[0](value):
                raise InvalidInputError(f"{f.metadata['flag']} {check[1]}, got {value!r}")
        checks = [
            (
                self.over_budget in OVER_BUDGET_MODES,
                f"--over-budget must be one of {', '.join(OVER_BUDGET_MODES)}, got '{self.over_budget}'",
            ),
            (
                self.openai_categories in OPENAI_CATEGORY_MODES,
                f"--openai-categories must be one of {', '.join(OPENAI_CATEGORY_MODES)}, got '{self.openai_categories}'",
            ),
            (self.ray is None or self.ray.strip() != "", "--ray needs an address, 'auto' or 'local'"),
            (self.ray is not None or self.replicas == 1, "--replicas needs --ray (one serve process is one replica)"),
            (self.affinity in AFFINITY_MODES, f"--affinity must be one of {', '.join(AFFINITY_MODES)}"),
            (
                self.api_key is None or len(self.api_key) >= 16,
                "the API key must be at least 16 characters (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidInputError(message)

    @property
    def kv_pool_tokens(self) -> int:
        """--kv-tokens, or serve's default: two contexts of cells (the library's is one)."""
        return self.runtime.kv_tokens or default_kv_tokens(self.runtime.n_ctx, self.runtime.slots, SERVE_KV_CONTEXTS)

    @property
    def engine_threads(self) -> int:
        return self.runtime.threads or default_threads()

    @property
    def model_name(self) -> str:
        return self.model.stem if self.model is not None else "wildguard"


def add_arguments(parser: argparse.ArgumentParser, required: tuple[str, ...] = ("model",)) -> None:
    """One flag per settings field, with the field's default and help."""
    for f in dataclasses.fields(ServeSettings):
        meta = f.metadata
        if "runtime" in meta:
            add_runtime_flags(parser, *RUNTIME_FLAGS, slots=SERVE_RUNTIME.slots)
            continue
        help_ = meta["help"] + (f" (default {f.default})" if meta["show_default"] else "")
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_}
        if meta["action"] is not None:
            kwargs["action"] = meta["action"]
        if meta["type"] is not None:
            kwargs["type"] = meta["type"]
        if meta["choices"] is not None:
            kwargs["choices"] = meta["choices"]
        else:
            kwargs["metavar"] = meta["flag"].lstrip("-").upper().replace("-", "_")
        if f.name in required:
            kwargs["required"] = True
        else:
            kwargs["default"] = None if meta["convert"] else f.default
        parser.add_argument(meta["flag"], **kwargs)


def from_args(args: argparse.Namespace) -> ServeSettings:
    """The settings from parsed flags (converting those that say how, e.g. the key file)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ServeSettings):
        if "runtime" in f.metadata:
            values[f.name] = runtime_config(args)
            continue
        value = getattr(args, f.name)
        convert = f.metadata["convert"]
        values[f.name] = convert(value) if convert is not None and value is not None else value
    return ServeSettings(**values)
