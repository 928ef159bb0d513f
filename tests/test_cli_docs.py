"""Docs that stay true: docs/cli.md is the live `--help` of every command and benchmark, and CI
runs the README's test command as written."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _regen():
    spec = importlib.util.spec_from_file_location("regen_cli", ROOT / "docs" / "regen_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REGEN = _regen()
DOCUMENTED = REGEN.documented((ROOT / "docs" / "cli.md").read_text(encoding="utf-8"))


@pytest.mark.parametrize("command", REGEN.commands())
def test_cli_md_is_the_live_help(command):
    assert command in DOCUMENTED, f"docs/cli.md has no section for `{command}`: run python docs/regen_cli.py"
    assert DOCUMENTED[command] == REGEN.live_help(command), "run python docs/regen_cli.py"


def test_serving_md_options_are_serve_help():
    """docs/serving.md's option table is generated from serve's parser: every flag, its default
    and its help, as `serve --help` prints them."""
    text = (ROOT / "docs" / "serving.md").read_text(encoding="utf-8")
    assert REGEN.regenerate_serving(text) == text, "run python docs/regen_cli.py"
    help_ = " ".join(REGEN.live_help("serve").split())
    table = REGEN.serve_options()
    for line in table.splitlines()[2:]:
        flag = line.split("`")[1]
        assert flag in help_ and line.count("|") >= 4, line


def test_cli_md_documents_nothing_else():
    assert sorted(DOCUMENTED) == sorted(REGEN.commands())


def test_the_regenerated_file_is_the_file():
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert REGEN.regenerate(text) == text


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"\nThe tests .*?```bash\n(.+?)\n```", readme, re.S)
    assert block, "README.md: no test command under 'The tests'"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert block.group(1).strip() in [line.strip() for line in ci]
