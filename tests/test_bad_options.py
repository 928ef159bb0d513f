"""The bad-option matrix of the commands that start long jobs: `serve` and `classify --ray`.

One commented row per case, each in a child process as a user runs it: exit status 2, one
line on stderr that names the option and what it must be, no traceback, no file left behind.
Every option here is refused before a model loads, so the rows need no model.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from wildguard_lite.defaults import available_cores

CORES = available_cores()
CLI = "import sys; from wildguard_lite.cli import main; sys.exit(main())"


def child(args: list[str], cwd, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def assert_one_line_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, f"status {proc.returncode}: {proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(pattern, last), proc.stderr[-3000:]


RAY_ROWS = [
    # more CPUs than the machine has (the docs' --actors 2 --threads 4 on 2 cores): was a hang
    (["--actors", "2", "--threads", str(CORES)], rf"--actors 2 x --threads {CORES} needs {2 * CORES} CPUs, but this "
     rf"machine has {CORES} .*Ray would wait for ever.*Use --actors 2 --threads {max(1, CORES // 2)}"),
    # more actors than cores at the default of 1 thread each: was a hang
    (["--actors", str(CORES + 1)], rf"--actors {CORES + 1} x --threads 1 needs {CORES + 1} CPUs.*Use --actors {CORES} "),
    # a batch size of 0: was replaced by the default silently
    (["--batch-size", "0"], r"batch_size must be an integer of at least 1, got 0"),
    # 0 threads: was replaced by the default silently
    (["--threads", "0"], r"threads must be between 1 and 512, got 0"),
    # no actors
    (["--actors", "0"], r"actors must be an integer of at least 1, got 0"),
]


@pytest.mark.parametrize("args, message", RAY_ROWS, ids=[f"ray-{i}" for i in range(len(RAY_ROWS))])
def test_ray_refuses_bad_options(tmp_path, args, message):
    pytest.importorskip("ray.data")
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "hi"}\n')
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    proc = child(["-c", CLI, "classify", "--model", str(model), "--input", str(src),
                  "--output", str(tmp_path / "out.jsonl"), "--ray", *args], tmp_path)
    assert_one_line_error(proc, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "model.gguf"]


@pytest.mark.parametrize("args", [["--batch-size", "8"], ["--actors", "2"]])
def test_ray_options_without_ray_are_refused(tmp_path, args):
    # Were ignored: the user believed the job ran on Ray.
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "hi"}\n')
    proc = child(["-c", CLI, "classify", "--model", "m.gguf", "--input", str(src),
                  "--output", str(tmp_path / "out.jsonl"), *args], tmp_path)
    assert_one_line_error(proc, r"--actors and --batch-size go with --ray")
