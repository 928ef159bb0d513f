"""Each default and name declared once: the runtime flags of every command come from
wildguard_lite/flags.py, the mode default from defaults.DEFAULT_MODE, the label names from
contract.LABEL_KEYS (read from the code and the live parsers, not from a list of commands)."""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
from pathlib import Path

import pytest

from wildguard_lite.cli import COMMANDS
from wildguard_lite.cli.bench import BENCHMARKS, benchmark_module
from wildguard_lite.contract import LABEL_KEYS
from wildguard_lite.defaults import default_threads
from wildguard_lite.flags import FLAGS, add_runtime_flags

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for folder in ("wildguard_lite", "convert", "benchmarks") for p in sorted((ROOT / folder).rglob("*.py"))]
# Label names written out as strings in modules owned by the engine and gateway work (to move to
# contract.LABEL_KEYS there); no other module may add one.
LABEL_LITERALS_LEFT = {
    "wildguard_lite/runtime.py": 1,
    "wildguard_lite/streaming.py": 1,
    "wildguard_lite/server/moderation.py": 3,
}


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser, and every benchmark's (as `bench NAME` builds it)."""
    out = {}
    for name, (module, _) in COMMANDS.items():
        if name != "bench":
            out[name] = importlib.import_module(f"wildguard_lite.cli.{module}").build_parser()
    for name in BENCHMARKS:
        parser = argparse.ArgumentParser(prog=f"bench {name}")
        benchmark_module(name).add_arguments(parser)
        out[f"bench {name}"] = parser
    return out


def _runtime_actions():
    flags = {flag: dest for dest, (flag, _) in FLAGS.items()}
    for command, parser in _parsers().items():
        for action in parser._actions:  # argparse keeps no public list of a parser's arguments
            shared = [s for s in action.option_strings if s in flags]
            if shared:
                yield command, flags[shared[0]], action


def test_every_runtime_flag_is_the_shared_declaration():
    seen = set()
    for command, dest, action in _runtime_actions():
        _, declared = FLAGS[dest]
        seen.add(dest)
        assert action.dest == dest, command
        for key in ("type", "choices", "help", "metavar"):
            assert getattr(action, key) == declared.get(key), (command, dest, key)
        if "%(default)s" not in declared["help"]:  # only a default the help prints may differ
            assert action.default == declared["default"], (command, dest)
    assert seen == set(FLAGS)


def test_threads_default_is_the_librarys_everywhere():
    from wildguard_lite.server.settings import ServeSettings

    assert all(action.default is None for _, dest, action in _runtime_actions() if dest == "threads")
    assert ServeSettings().engine_threads == default_threads()


@pytest.mark.parametrize(
    "names, defaults, message",
    [
        (("threads", "cores"), {}, "unknown runtime flag"),  # a typo fails loudly
        (("threads",), {"threads": 2}, "no other default"),  # its help states the library's default
        (("mode",), {"n_ctx": 1024}, "no other default"),  # a default for a flag not added
    ],
)
def test_add_runtime_flags_refuses(names, defaults, message):
    with pytest.raises(ValueError, match=message):
        add_runtime_flags(argparse.ArgumentParser(), *names, **defaults)


@functools.lru_cache(maxsize=1)
def _trees() -> list[tuple[str, ast.Module]]:
    return [(path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(encoding="utf-8"))) for path in SOURCES]


def test_no_literal_mode_default():
    bad = []
    for where, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args + node.args.kwonlyargs
                defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults
                defaults += node.args.kw_defaults
                bad += [
                    f"{where}:{node.lineno} {node.name}"
                    for arg, d in zip(args, defaults)
                    if arg.arg == "mode" and isinstance(d, ast.Constant)
                ]
    assert bad == [], "write mode: str = DEFAULT_MODE (defaults.py)"


def test_label_names_come_from_the_contract():
    counts = {}
    for where, tree in _trees():
        if where == "wildguard_lite/contract.py":
            continue
        n = sum(isinstance(node, ast.Constant) and node.value in LABEL_KEYS for node in ast.walk(tree))
        if n:
            counts[where] = n
    assert counts == LABEL_LITERALS_LEFT
