"""The layering docs/architecture.md states, read from the code's imports (ast, no import run).

Every `import` counts, at module level or inside a function. Those under `if TYPE_CHECKING:`
never run: they count for import circles (a type-level circle is still two modules that each
need the other; mypy and readers follow it) but not for what the core loads (heavy libraries).
The folders setuptools maps into the package (`package-dir` in
pyproject.toml: convert/, benchmarks/) are read under their installed names.
"""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "wildguard_lite"
# The layers above the core: nothing in the core imports them.
TOOLS = tuple(f"{PACKAGE}.{name}" for name in ("cli", "server", "convert", "benchmarks"))
# What each upper layer must not import (the CLI sits on top and may import them all).
FORBIDDEN = {
    f"{PACKAGE}.server": (f"{PACKAGE}.cli", f"{PACKAGE}.convert", f"{PACKAGE}.benchmarks"),
    f"{PACKAGE}.convert": (f"{PACKAGE}.cli", f"{PACKAGE}.server", f"{PACKAGE}.benchmarks"),
    f"{PACKAGE}.benchmarks": (f"{PACKAGE}.cli",),
}
# The core reaches these only through errors.require (lazily, with the pip command to install
# them): never an import statement.
HEAVY = ("fastapi", "starlette", "uvicorn", "torch", "transformers", "optimum")


def _package_dirs() -> dict[str, Path]:
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    mapped = config["tool"]["setuptools"].get("package-dir", {})
    return {PACKAGE: ROOT / PACKAGE, **{name: ROOT / folder for name, folder in mapped.items()}}


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package as installed."""
    out = {}
    for name, folder in _package_dirs().items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([name, *parts])] = path
    return out


class _Imports(ast.NodeVisitor):
    """The dotted names a module imports, with their line; TYPE_CHECKING blocks skipped unless
    `type_level`."""

    def __init__(self, module: str, is_package: bool, type_level: bool = False):
        self.base = module.split(".") if is_package else module.split(".")[:-1]
        self.found: list[tuple[str, int]] = []
        self.type_level = type_level

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if not self.type_level and (
            (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
        ):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(alias.name, node.lineno) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.base[: len(self.base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        # `from pkg import name`: the submodule pkg.name when there is one, else pkg.
        self.found += [(f"{source}.{alias.name}", node.lineno) for alias in node.names]


def imports_of(source: str, module: str, is_package: bool = False, type_level: bool = False) -> list[tuple[str, int]]:
    visitor = _Imports(module, is_package, type_level)
    visitor.visit(ast.parse(source))
    return visitor.found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The package module `name` refers to (itself or its nearest ancestor), else None."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


@functools.lru_cache(maxsize=2)
def graph(type_level: bool = True) -> tuple[dict[str, set[str]], dict[str, list[tuple[str, int]]]]:
    """Edges between the package's modules, and every import of each module (external ones
    too); with `type_level`, the imports under TYPE_CHECKING as well."""
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    raw: dict[str, list[tuple[str, int]]] = {}
    for module, path in modules.items():
        raw[module] = imports_of(path.read_text(encoding="utf-8"), module, path.name == "__init__.py", type_level)
        for name, _ in raw[module]:
            target = _resolve(name, modules) if name.startswith(PACKAGE) else None
            if target is not None and target != module:
                edges[module].add(target)
    return edges, raw


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _in(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


@pytest.mark.parametrize(
    "source, module, is_package, expected",
    [
        # module level and inside a function alike
        (
            "import os\ndef f():\n    from .batch import run_batch\n",
            "wildguard_lite.cli.classify",
            False,
            ["os", "wildguard_lite.cli.batch.run_batch"],
        ),
        # `..` climbs one package; `from . import x` names the submodule x
        (
            "from ..errors import E\nfrom . import run\n",
            "wildguard_lite.cli.classify",
            False,
            ["wildguard_lite.errors.E", "wildguard_lite.cli.run"],
        ),
        # in a package's __init__, `.` is the package itself
        ("from .build import ensure_toy\n", "wildguard_lite.toy", True, ["wildguard_lite.toy.build.ensure_toy"]),
        # TYPE_CHECKING blocks never run: not an edge; their else branch runs
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .runtime import Classifier\n"
            "else:\n    import json\n",
            "wildguard_lite.streaming",
            False,
            ["typing.TYPE_CHECKING", "json"],
        ),
        ("import typing\nif typing.TYPE_CHECKING:\n    import torch\n", "wildguard_lite.x", False, ["typing"]),
    ],
)
def test_imports_are_read_as_python_runs_them(source, module, is_package, expected):
    assert [name for name, _ in imports_of(source, module, is_package)] == expected


def test_the_checker_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_mapped_folders_are_read_under_their_installed_names():
    modules = _modules()
    assert modules["wildguard_lite.convert.pipeline"] == ROOT / "convert" / "pipeline.py"
    assert modules["wildguard_lite.benchmarks.speed"] == ROOT / "benchmarks" / "speed.py"
    assert modules["wildguard_lite.runtime"] == ROOT / "wildguard_lite" / "runtime.py"


def test_type_level_imports_are_read_when_asked():
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .runtime import Classifier\n"
    names = [name for name, _ in imports_of(source, "wildguard_lite.aio", type_level=True)]
    assert names == ["typing.TYPE_CHECKING", "wildguard_lite.runtime.Classifier"]


def test_no_import_circles():
    """Counting imports under TYPE_CHECKING: a circle there is still two modules that need each other."""
    edges, _ = graph(type_level=True)
    assert cycles(edges) == [], "modules that import each other (docs/architecture.md: imports point down)"


def test_the_core_never_imports_the_tools():
    edges, _ = graph()
    bad = sorted(f"{m} -> {t}" for m, targets in edges.items() if not _in(m, TOOLS) for t in targets if _in(t, TOOLS))
    assert bad == [], "the core (wildguard_lite/ without cli/ and server/) imports convert/benchmarks/cli/server"


def test_upper_layers_import_only_downwards():
    edges, _ = graph()
    bad = sorted(
        f"{m} -> {t}"
        for m, targets in edges.items()
        for layer, forbidden in FORBIDDEN.items()
        if _in(m, (layer,))
        for t in targets
        if _in(t, forbidden)
    )
    assert bad == []


def test_the_core_imports_no_web_framework_torch_or_transformers():
    _, raw = graph(type_level=False)  # what runs: a TYPE_CHECKING import loads nothing
    bad = sorted(
        f"{m}:{line} imports {name}"
        for m, names in raw.items()
        if not _in(m, TOOLS)
        for name, line in names
        if name.split(".")[0] in HEAVY
    )
    assert bad == [], "the core loads these through errors.require (an install hint), never an import statement"


def test_architecture_md_names_every_module():
    """docs/architecture.md's map names each module (by its last name: `slots`, `pool`, ...)."""
    import re

    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [m for m in _modules() if not re.search(rf"(?<!\w){re.escape(m.rsplit('.', 1)[-1])}(?!\w)", doc)]
    assert missing == [], "add these modules to docs/architecture.md's map"
