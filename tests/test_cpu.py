"""Polite CPU use: --nice lowers the process's priority before the engine starts its threads
(docs/cpu.md). The timing is `wildguard-lite bench contention`'s; these tests check the option."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

CLI = "import sys; from wildguard_lite.cli import main; sys.exit(main())"


@pytest.mark.parametrize(
    "command", [["classify", "--model", "m.gguf", "--prompt", "hi"], ["serve", "--model", "{model}"]]
)
@pytest.mark.parametrize(
    "value, message",
    [
        ("20", r"--nice must be (an integer )?from 0 \(normal priority\) to 19 \(lowest\)"),  # beyond nice(1)'s range
        ("-1", r"--nice must be (an integer )?from 0"),  # raising the priority needs privileges: refused
    ],
)
def test_bad_nice_values(tmp_path, command, value, message):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    argv = [a.format(model=model) for a in command]
    proc = subprocess.run(
        [sys.executable, "-c", CLI, *argv, "--nice", value], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert re.search(message, proc.stderr.strip().splitlines()[-1]), proc.stderr


@pytest.mark.skipif(not hasattr(os, "nice"), reason="no process priorities here")
def test_nice_is_set_before_the_model_loads(tmp_path):
    # The model is missing, which is found when it loads: the priority must already be lower
    # by then (the engine's threads inherit it), so the child reports its niceness at exit.
    code = "import os, atexit\natexit.register(lambda: print('nice', os.nice(0)))\n" + CLI.replace("; ", "\n")
    proc = subprocess.run(
        [sys.executable, "-c", code, "classify", "--model", "missing.gguf", "--prompt", "hi", "--nice", "7"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "no such model file" in proc.stderr, proc.stderr
    assert f"nice {min(19, os.nice(0) + 7)}" in proc.stdout, proc.stdout + proc.stderr
