"""Child Pythons import the installed package, never a `wildguard_lite/` in the working
directory (a checkout's, after a non-editable install: `bench speed` died with "No module named
'wildguard_lite.benchmarks'"). .ci/run's stage 5 runs the real thing from a non-editable install."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import wildguard_lite
from wildguard_lite.utils import python_command

ROOT = Path(__file__).resolve().parents[1]
INSTALLED = Path(wildguard_lite.__file__).resolve().parent


@pytest.fixture
def shadowing_cwd(tmp_path):
    """A working directory whose `wildguard_lite/` would shadow the real one."""
    fake = tmp_path / "wildguard_lite"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('the working directory shadowed the package')\n")
    (fake / "probe.py").write_text("raise ImportError('the working directory shadowed the package')\n")
    return tmp_path


@pytest.mark.parametrize("version", [sys.version_info[:3], (3, 10, 14)], ids=["this-python", "as-on-3.10"])
@pytest.mark.parametrize("how", ["-m", "-c"])
def test_child_python_imports_the_installed_package(shadowing_cwd, monkeypatch, version, how):
    monkeypatch.setattr(sys, "version_info", version)  # 3.10 has no -P: the command says so itself
    if how == "-m":
        args = python_command("-m", "wildguard_lite.utils", "ignored-arg")
        code_check = None
    else:
        code_check = "import sys, wildguard_lite; print(wildguard_lite.__file__); print(sys.argv[1:])"
        args = python_command("-c", code_check, "a", "b")
    monkeypatch.undo()
    assert ("-P" in args) == (version >= (3, 11))
    if how == "-m":
        # the module runs as __main__ from the installed package (utils has no main: exit 0)
        done = subprocess.run(args, cwd=shadowing_cwd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    else:
        done = subprocess.run(args, cwd=shadowing_cwd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        file, argv = done.stdout.splitlines()
        assert Path(file).resolve().parent == INSTALLED and argv == "['a', 'b']"


def test_a_plain_child_python_is_shadowed(shadowing_cwd):
    """What the fixture stands for: without python_command the child imports the cwd's folder."""
    done = subprocess.run([sys.executable, "-m", "wildguard_lite.utils"], cwd=shadowing_cwd, capture_output=True)
    assert done.returncode != 0 and b"shadowed the package" in done.stderr


def test_python_command_takes_a_module_or_code():
    with pytest.raises(ValueError, match="'-m MODULE' or '-c CODE'"):
        python_command("script.py")


def test_no_child_python_is_started_without_python_command():
    """Every `[sys.executable, ...]` in the package's code goes through `python_command`."""
    folders = [ROOT / "wildguard_lite", ROOT / "benchmarks", ROOT / "convert"]
    bad = []
    for path in sorted(p for folder in folders for p in folder.rglob("*.py")):
        if path == ROOT / "wildguard_lite" / "utils.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.List) and node.elts:
                first = node.elts[0]
                if isinstance(first, ast.Attribute) and first.attr == "executable":
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert bad == [], "start child Pythons with wildguard_lite.utils.python_command"
