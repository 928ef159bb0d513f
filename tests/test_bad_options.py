"""The bad-option matrix of the commands that start long jobs: `serve` and `classify --ray`.

One commented row per case, each in a child process as a user runs it: exit status 2, one
line on stderr that names the option and what it must be, no traceback, no file left behind.
Every option here is refused before a model loads, so the rows need no model.
"""

from __future__ import annotations

import importlib.util
import re
import socket
import subprocess
import sys

import pytest

from wildguard_lite.defaults import available_cores

CORES = available_cores()
# The rows that get as far as binding a socket need uvicorn (the [serve] extra).
needs_uvicorn = pytest.mark.skipif(
    importlib.util.find_spec("uvicorn") is None, reason="the [serve] extra (uvicorn) is not installed"
)
CLI = "import sys; from wildguard_lite.cli import main; sys.exit(main())"


def child(args: list[str], cwd, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def assert_one_line_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, f"status {proc.returncode}: {proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(pattern, last), proc.stderr[-3000:]


SERVE_ROWS = [
    # an infinite request timeout: was OverflowError (a traceback)
    (["--timeout", "inf"], r"--timeout must be positive, at most 86400 s, got inf"),
    # one that overflows to inf when parsed
    (["--timeout", "1e999"], r"--timeout must be positive.*got inf"),
    # not a number (already refused: guards the checks' move to the fields that declare them)
    (["--timeout", "nan"], r"--timeout must be positive.*got nan"),
    # negative (already refused, as above)
    (["--timeout", "-1"], r"--timeout must be positive"),
    # an infinite body timeout
    (["--body-timeout", "inf"], r"--body-timeout must be positive.*got inf"),
    # no time at all for a request's head
    (["--header-timeout", "0"], r"--header-timeout must be positive"),
    # an infinite prefix cache: was a traceback, then "could not listen on ... (in use)"
    (["--prefix-cache-mb", "inf"], r"--prefix-cache-mb must be MB from 0 \(off\) to 1048576, got inf"),
    # ... nan
    (["--prefix-cache-mb", "nan"], r"--prefix-cache-mb must be MB from 0 \(off\).*got nan"),
    # ... negative
    (["--prefix-cache-mb", "-1"], r"--prefix-cache-mb must be MB from 0 \(off\)"),
    # a port beyond 65535 (already refused, as above)
    (["--port", "70000"], r"--port must be 0-65535"),
    # an address that is not this machine's (TEST-NET-3): was "could not listen (in use, or ...)"
    pytest.param(
        ["--host", "203.0.113.7", "--port", "0"],
        r"could not listen on 203\.0\.113\.7:0: not an address of this machine",
        marks=needs_uvicorn,
    ),
    # a host name that does not resolve
    pytest.param(
        ["--host", "no-such-host.invalid", "--port", "0"],
        r"--host no-such-host\.invalid: not an address or a known host",
        marks=needs_uvicorn,
    ),
]


@pytest.mark.parametrize("args, message", SERVE_ROWS, ids=[f"serve-{i}" for i in range(len(SERVE_ROWS))])
def test_serve_refuses_bad_options(tmp_path, args, message):
    model = tmp_path / "model.gguf"  # never opened: the options are refused first
    model.write_bytes(b"GGUF")
    assert_one_line_error(child(["-m", "wildguard_lite.cli.serve", "--model", str(model), *args], tmp_path), message)


@needs_uvicorn
def test_serve_on_a_port_in_use_says_so(tmp_path):
    # A real EADDRINUSE: the one case that says "in use", and before the model loads.
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = child(["-m", "wildguard_lite.cli.serve", "--model", str(model), "--port", str(port)], tmp_path)
    assert_one_line_error(proc, rf"could not listen on 127\.0\.0\.1:{port}: the port is in use")


UNEXPECTED = """
import sys
from pathlib import Path
import wildguard_lite.server.app as app
from wildguard_lite.cli import run
from wildguard_lite.server import ServeSettings

def broken(settings):
    raise RuntimeError("a bug in start-up")

app.make_prefix_cache = broken  # fails in the app's lifespan, before the model loads
sys.exit(run(lambda: app.serve(ServeSettings(model=Path(sys.argv[1]), port=0))))
"""


@needs_uvicorn
def test_unexpected_startup_error_is_not_reported_as_a_busy_port(tmp_path):
    # Was: uvicorn's traceback, then "could not listen on 127.0.0.1:0 (in use, ...)".
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    proc = child(["-c", UNEXPECTED, str(model)], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "could not listen" not in proc.stderr and "in use" not in proc.stderr, proc.stderr[-3000:]
    assert "a bug in start-up" in proc.stderr  # uvicorn's log keeps the cause
    assert (
        proc.stderr.strip().splitlines()[-1] == "error: serve could not start: an unexpected error (see the log above)"
    )


RAY_ROWS = [
    # more CPUs than the machine has (the docs' --actors 2 --threads 4 on 2 cores): was a hang
    (
        ["--actors", "2", "--threads", str(CORES)],
        rf"--actors 2 x --threads {CORES} needs {2 * CORES} CPUs, but this "
        rf"machine has {CORES} .*Ray would wait for ever.*Use --actors 2 --threads {max(1, CORES // 2)}",
    ),
    # more actors than cores at the default of 1 thread each: was a hang
    (
        ["--actors", str(CORES + 1)],
        rf"--actors {CORES + 1} x --threads 1 needs {CORES + 1} CPUs.*Use --actors {CORES} ",
    ),
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
    proc = child(
        [
            "-c",
            CLI,
            "classify",
            "--model",
            str(model),
            "--input",
            str(src),
            "--output",
            str(tmp_path / "out.jsonl"),
            "--ray",
            *args,
        ],
        tmp_path,
    )
    assert_one_line_error(proc, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "model.gguf"]


@pytest.mark.parametrize("args", [["--batch-size", "8"], ["--actors", "2"]])
def test_ray_options_without_ray_are_refused(tmp_path, args):
    # Were ignored: the user believed the job ran on Ray.
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "hi"}\n')
    proc = child(
        [
            "-c",
            CLI,
            "classify",
            "--model",
            "m.gguf",
            "--input",
            str(src),
            "--output",
            str(tmp_path / "out.jsonl"),
            *args,
        ],
        tmp_path,
    )
    assert_one_line_error(proc, r"--actors and --batch-size go with --ray")


def test_ray_refuses_a_parquet_id_it_cannot_write(tmp_path):
    # A timestamp id column under --ray: was a TypeError inside a failed Ray job; now refused
    # before Ray starts, no file left behind.
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pytest.importorskip("ray.data")
    import datetime

    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "id": [datetime.datetime(2024, 1, 1)] * 2}), src)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    proc = child(
        [
            "-c",
            CLI,
            "classify",
            "--model",
            str(model),
            "--input",
            str(src),
            "--output",
            str(tmp_path / "out.jsonl"),
            "--ray",
        ],
        tmp_path,
    )
    assert_one_line_error(proc, r"in\.parquet: column 'id' has type timestamp\[us\]; it must hold strings or integers")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet", "model.gguf"]
